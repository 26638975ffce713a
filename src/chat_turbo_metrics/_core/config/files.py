"""Where ``configs/<environment>.toml`` files are looked up, and which directories are safe to read them from."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from chat_turbo_metrics._core.config.core import CONFIG_DIR, ENVIRONMENTS
from chat_turbo_metrics._core.config.declaration import ConfigurationError

_logger = logging.getLogger("chat_turbo_metrics.config")

(CONFIG_DIR_VARIABLE,) = CONFIG_DIR.names
_PACKAGED = Path(__file__).resolve().parents[2] / "configs"
_CHECKOUT = Path(__file__).resolve().parents[4] / "configs"


def config_dirs(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """Where ``<environment>.toml`` files are looked up, in this order; the first directory holding the file wins.

    1. ``$CHAT_TURBO_CONFIG_DIR``, when set (a relative path is taken from the working directory);
    2. ``configs/`` in the working directory, when it is the user's own: owned by this user (or root),
       writable by no one else, not a symbolic link; otherwise it is skipped with a warning;
    3. the ``configs/`` shipped inside the installed package;
    4. the ``configs/`` of a source checkout the package runs from.

    Args:
        env: the environment variables (default ``os.environ``).

    Raises:
        ConfigurationError: ``CHAT_TURBO_CONFIG_DIR`` is set but is not a directory.
    """
    env = os.environ if env is None else env
    found: list[Path] = []
    chosen = env.get(CONFIG_DIR_VARIABLE, "").strip()
    if chosen:
        if not Path(chosen).is_dir():
            raise ConfigurationError(f"{CONFIG_DIR_VARIABLE}={chosen!r}: not a directory")
        found.append(Path(chosen).absolute())
    local = Path.cwd() / "configs"
    if local.is_dir() and local.resolve() not in (_PACKAGED, _CHECKOUT):
        problem = _not_owned(local)
        if problem:
            _logger.warning("not reading %s: it %s; set %s to use it anyway", local, problem, CONFIG_DIR_VARIABLE)
        else:
            found.append(local)
    return (*found, _PACKAGED, _CHECKOUT)


def _not_owned(path: Path) -> str:
    """Why ``path`` is not safely the user's own (another user could have put it there or can change it), or ''."""
    try:
        info = path.lstat()
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    uid = getattr(os, "getuid", lambda: info.st_uid)()
    if info.st_uid not in (uid, 0):
        return f"belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by other users"
    return ""


# configs/ also holds files that are not environments (alert rules for AlertManager.load_rules).
NOT_ENVIRONMENTS = frozenset({"alert_rules"})


def config_file(environment: str, env: Mapping[str, str], setting: str = "environment") -> Path:
    """The file of ``environment``, chosen by ``setting`` (``environment`` in code, or ``CHAT_TURBO_ENV``)."""
    if environment in NOT_ENVIRONMENTS:
        raise ConfigurationError(f"{setting}={environment!r}: configs/{environment}.toml is not an environment")
    if not environment or not environment.replace("-", "").replace("_", "").isalnum():
        raise ConfigurationError(f"{setting}={environment!r}: expected a name such as {', '.join(ENVIRONMENTS)}")
    directories = config_dirs(env)
    for directory in directories:
        candidate = directory / f"{environment}.toml"
        if candidate.is_file():
            problem = _not_owned(candidate) if directory == Path.cwd() / "configs" else ""
            if not problem:
                return candidate
            _logger.warning("not reading %s: it %s", candidate, problem)
    shipped = sorted({p.stem for d in directories if d.is_dir() for p in d.glob("*.toml")} - NOT_ENVIRONMENTS)
    searched = ", ".join(str(directory) for directory in directories if directory.is_dir())
    raise ConfigurationError(
        f"{setting}={environment!r}: no {environment}.toml in {searched} (available: {', '.join(shipped)})"
    )
