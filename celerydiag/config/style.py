"""The user's setting-name style, so every printed snippet can be pasted into their own config.

Celery reads three spellings (``celery/app/utils.py`` ``detect_settings``): new lowercase names
(``result_backend``), the old UPPERCASE ones (``CELERY_RESULT_BACKEND``,
``CELERY_RESULT_ENGINE_OPTIONS``), and, with ``config_from_object(..., namespace='CELERY')`` as
Django projects do, the new names upper-cased behind the prefix (``CELERY_DATABASE_ENGINE_OPTIONS``).
A config that mixes lowercase with old names makes Celery refuse to start ("Cannot mix new setting
names with old setting names"), so a lowercase snippet pasted into an old-style module breaks the
app instead of fixing it. We read the style from the app the way Celery itself decided it: the
app's ``namespace`` (a prefix always means new names behind it) and the loaded settings'
``deprecated_settings`` (the old names Celery found).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NEW = "new"
OLD = "old"
NAMESPACE = "namespace"


@dataclass(frozen=True)
class Naming:
    """How to spell a setting in the user's config: ``kind`` new | old | namespace, and for a
    namespace its prefix with the trailing underscore (``CELERY_``)."""

    kind: str = NEW
    prefix: str = ""

    def name(self, setting: str) -> str:
        """The spelling of new-style ``setting`` in this style. An old config keeps a setting
        that has no old name (one Celery reads but does not declare) lowercase: Celery looks it
        up under that name and lowercase undeclared names do not trip the mixing check."""
        if self.kind == OLD:
            from celery.app.defaults import _TO_OLD_KEY

            return str(_TO_OLD_KEY.get(setting, setting))
        if self.kind == NAMESPACE:
            # celery.utils.collections.match_case: an upper-case prefix upper-cases the key
            key = setting.upper() if self.prefix.isupper() else setting
            return f"{self.prefix}{key}"
        return setting

    def describe(self) -> str:
        if self.kind == OLD:
            return "old UPPERCASE setting names, as your config uses"
        if self.kind == NAMESPACE:
            return f"{self.prefix}-prefixed names of your app's namespace, as your config uses"
        return "new lowercase setting names"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "prefix": self.prefix}

    @classmethod
    def from_dict(cls, data: Any) -> Naming:
        if not isinstance(data, dict) or data.get("kind") not in (NEW, OLD, NAMESPACE):
            return cls()
        return cls(str(data["kind"]), str(data.get("prefix") or ""))


def detect(app: Any) -> Naming:
    """The style of ``app``'s config; new names when there is no app or it cannot be read (a
    user's config that fails to load is not this function's finding)."""
    if app is None:
        return Naming()
    namespace = getattr(app, "namespace", None)
    if namespace:
        return Naming(NAMESPACE, str(namespace).rstrip("_") + "_")
    try:
        deprecated = getattr(app.conf, "deprecated_settings", None)
    except Exception:  # ImproperlyConfigured and friends: the config probe reports those
        return Naming()
    return Naming(OLD) if deprecated else Naming()


def to_new(name: str) -> str:
    """The new lowercase name of a setting spelled in any of the three styles."""
    from celery.app.defaults import _TO_NEW_KEY, SETTING_KEYS

    if name in SETTING_KEYS or name.islower():
        return name
    if name in _TO_NEW_KEY:
        return str(_TO_NEW_KEY[name])
    if name.startswith("CELERY_"):
        return name[len("CELERY_"):].lower()
    return name.lower()
