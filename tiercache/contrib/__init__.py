"""Framework adapters: a Django cache backend (`tiercache.contrib.django`) and a
Flask-Caching backend (`tiercache.contrib.flask`), and the signed pickle serializer they
default to (`tiercache.contrib.signing`). Neither framework is a dependency of the core:
install the ``tiercache[django]`` or ``tiercache[flask]`` extra.
"""

from __future__ import annotations

__all__: list[str] = []
