from configs.config import get_cfg_defaults, load_cfg, resolve_path, PROJECT_ROOT  # noqa: F401
