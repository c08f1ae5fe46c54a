"""What request handlers share: the settings, the catalogue, the hub, storage, the clock and the
count of failed sign-ins."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .catalogue import Catalogue
from .config import Settings
from .hub import Hub
from .metrics import Metrics
from .present import Presenter
from .signing import Signer
from .storage import Storage
from .throttle import SignInThrottle


@dataclass
class Services:
    settings: Settings
    catalogue: Catalogue
    hub: Hub
    storage: Storage
    signer: Signer
    presenter: Presenter
    metrics: Metrics
    clock: Callable[[], float]
    sign_ins: SignInThrottle


SERVICES = web.AppKey("services", Services)
