"""The embedded base model: a tiny Qwen2 chat model that sublearn builds and pretrains locally.

It lives beside the stages rather than inside `models` because its corpus is written in the
experiment's own prompt grammar and question lists; the model it produces is an ordinary
`save_pretrained` folder that every stage loads by path, exactly like a downloaded model.
"""

from sublearn.tinybase.build import BaseConfig, base_path, build_base, ensure_base, ensure_bases

__all__ = ["BaseConfig", "base_path", "build_base", "ensure_base", "ensure_bases"]
