"""Who the app is: a uid and gid no owner rule of the spec names."""

from __future__ import annotations

import grp

from ..spec import WILDCARD, CaptureSpec


def gid_of(group: str) -> int | None:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None  # the rules could not load either; the backends report that


def app_identity(spec: CaptureSpec) -> int:
    """The app's uid (and gid): one that no owner rule of the spec names."""
    named = set(spec.proxy_uids) | set(spec.proxy_gids)
    for groups in (spec.owner_groups_include, spec.owner_groups_exclude):
        if groups != WILDCARD:
            named |= {g for g in map(gid_of, groups) if g is not None}
    return next(n for n in range(1000, 70000) if n not in named)
