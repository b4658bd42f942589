"""The plotting helpers every report shares: a figure saved as PNG, atomically, and closed."""
from evaluation.plots import pyplot_agg, save_figure


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
    plt = pyplot_agg()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "line.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["line.png"]  # no temporary file left beside it
