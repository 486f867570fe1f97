"""The configs that ship with jaxcv, one `get_config(arg)` per file (each returns a locked ConfigDict).

`--config=NAME[:ARG]` finds `jaxcv/configs/NAME.py` (`jaxcv.config.resolve_config_path`) wherever jaxcv is
installed; in a clone `configs/` beside the package is a link to this folder, so `--config=configs/NAME.py`
works too. A path to any other file with a `get_config` works as well.
"""
