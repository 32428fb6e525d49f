from configs.config import PROJECT_ROOT, get_cfg_defaults, load_cfg, resolve_path  # noqa: F401
