"""The one ``Api`` every resource module of ``/api/v1`` registers its endpoints on."""

from __future__ import annotations

from daemon.web.api.endpoint import Api

API = Api(title="retentiond admin API", version="1")
