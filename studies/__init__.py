"""Study reproductions, one command each: `python -m studies reproduce CONFIG --out DIR`.

Each study is a config (configs/study/*.yaml, its kind named by the `study:` key) and a module with `load` and
`reproduce`; studies.runner keeps every step on disk and reuses it on a rerun.
"""
