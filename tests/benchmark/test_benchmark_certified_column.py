"""The leaderboard's certified columns: randomized smoothing's certified balanced accuracy per L2 radius the record
carries, an empty cell for an entry without a certified section, no column on a board where nobody is certified.
Hand-made records: no evaluation, no browser."""
from __future__ import annotations

from html.parser import HTMLParser

from benchmark.entry import BLOCK, Entry
from benchmark.site import board_page
from evaluation.record import ResultRecord

CERTIFIED = {"sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001, "n_examples": 8, "abstention_rate": 0.125,
             "radii": {"r0": {"radius": 0.0, "bacc": 0.8125, "acc": 0.875},
                       "r0_25": {"radius": 0.25, "bacc": 0.6875, "acc": 0.75},
                       "r1": {"radius": 1.0, "bacc": 0.0, "acc": 0.0}}}


def _entry(name: str, clean_bacc: float, certified=None) -> Entry:
    """A tiny L2 entry: clean and AutoAttack at 0.5, and `certified` as the record's section when given."""
    data = {"threat_model": {"norm": "l2", "epsilons": [0.5], "epsilon_labels": ["0.5"]},
            "clean": {"bacc": clean_bacc, "acc": clean_bacc, "n": 8},
            "autoattack": {"0.5": {"bacc": clean_bacc / 2, "acc": clean_bacc / 2, "epsilon": 0.5, "n": 8}},
            BLOCK: {"name": name, "model": {"class": "ERM", "architecture": "small_cnn"},
                    "protocol": {"name": "breastmnist_28", "version": 1, "standard": False,
                                 "settings": {"flag": "breastmnist", "size": 28}}}}
    if certified is not None:
        data["certified"] = certified
    return Entry(ResultRecord.from_dict(data))


class _Cells(HTMLParser):
    """{entry name: {column: (data-value, text)}} and the header's columns of a board page."""

    def __init__(self):
        super().__init__()
        self.rows, self.header, self._row, self._cell = {}, [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-entry" in attrs:
            self._row = self.rows.setdefault(attrs["data-entry"], {})
        elif tag == "th":
            self.header.append(attrs.get("data-column"))
        elif tag == "td" and self._row is not None:
            self._cell = attrs["data-column"]
            self._row[self._cell] = (attrs.get("data-value"), "")

    def handle_data(self, data):
        if self._cell is not None:
            value, text = self._row[self._cell]
            self._row[self._cell] = (value, text + data)

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None


def _board(entries) -> _Cells:
    parser = _Cells()
    parser.feed(board_page("breastmnist_28@1", "l2", False, entries))
    return parser


def test_certified_bacc_per_radius_beside_an_empty_cell_for_an_uncertified_entry():
    board = _board([_entry("smoothed", 0.8, CERTIFIED), _entry("plain", 0.9)])
    columns = ["cert_bacc@r0", "cert_bacc@r0_25", "cert_bacc@r1"]
    assert [c for c in board.header if c.startswith("cert_")] == [*columns, "cert_sigma"]
    for column, label in zip(columns, ("r0", "r0_25", "r1")):
        expected = CERTIFIED["radii"][label]["bacc"]
        assert board.rows["smoothed"][column] == (repr(expected), f"{expected:.4f}")
        assert board.rows["plain"][column][0] == ""  # empty cell (a dash), sorted last
    assert float(board.rows["smoothed"]["cert_sigma"][0]) == 0.25
    assert board.rows["smoothed"]["clean_bacc"][0] == "0.8"


def test_no_certified_column_on_a_board_without_certified_entries():
    board = _board([_entry("plain", 0.9), _entry("other", 0.7)])
    assert not [c for c in board.header if c.startswith("cert_")]
    assert "clean_bacc" in board.header
