"""Where licentia keeps its files: the home directory and its layout."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def home_from(args: argparse.Namespace) -> Path:
    """The licentia home: --home, else $LICENTIA_HOME, else a per-user or system default."""
    explicit = getattr(args, "home", None) or os.environ.get("LICENTIA_HOME")
    if explicit:
        return Path(explicit).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/licentia")
    return Path.home() / ".local" / "share" / "licentia"
