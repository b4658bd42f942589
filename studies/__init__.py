"""Study reproductions, one command each: `python -m studies reproduce CONFIG --out DIR`.

Each study is a config (configs/study/*.yaml, its kind named by the `study:` key) loaded as a
studies.framework.Study, a dataclass that reproduces itself; studies.runner keeps every step on disk and reuses it
on a rerun.
"""
