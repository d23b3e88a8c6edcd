"""`osteotel grafana push`: the datasource, the folder and the boards into a running Grafana.

`grafana-client` is the one boundary to Grafana's HTTP API; its errors become
`GrafanaPushError` here and nowhere else.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from apps.grafana.boards import build_dashboards
from apps.grafana.panels import Dashboard
from apps.grafana.provisioning import FOLDER_TITLE, FOLDER_UID
from osteotel.errors import OsteotelError

__all__ = ["GrafanaPushError", "PushAction", "push"]


class GrafanaPushError(OsteotelError):
    """Grafana could not be reached or refused a request during `push`.

    Attributes:
        status: the HTTP status when Grafana answered, else None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PushAction:
    """What `push` did to one Grafana object.

    Attributes:
        kind: `datasource`, `folder` or `dashboard`.
        uid: the object's uid.
        action: `created` or `updated`.
    """

    kind: Literal["datasource", "folder", "dashboard"]
    uid: str
    action: Literal["created", "updated"]


def push(
    *,
    url: str,
    token: str | None,
    datasource: Mapping[str, Any],
    dashboards: Iterable[Dashboard] | None = None,
    timeout_s: float = 10.0,
) -> list[PushAction]:
    """Create or update the datasource, the folder and the boards in a running Grafana.

    Args:
        url: Grafana's base URL, e.g. `https://grafana.example:3000`; user:password in the
            URL is used when `token` is None.
        token: a Grafana service-account token (Bearer), or None.
        datasource: the model from `datasource_model`.
        dashboards: the boards; all of `build_dashboards()` when None.
        timeout_s: per-request timeout, in seconds.

    Returns:
        One action per object, in the order done.

    Raises:
        GrafanaPushError: Grafana was unreachable or refused a request.
    """
    # Imported on use: grafana-client pulls in an HTTP stack the other commands never need.
    import niquests  # noqa: PLC0415
    from grafana_client.api import GrafanaApi  # noqa: PLC0415
    from grafana_client.client import GrafanaClientError, GrafanaException  # noqa: PLC0415

    boards = list(dashboards) if dashboards is not None else build_dashboards()
    api = GrafanaApi.from_url(url=url, credential=token, timeout=timeout_s)
    actions: list[PushAction] = []
    try:
        uid = str(datasource["uid"])
        try:
            api.datasource.get_datasource_by_uid(uid)
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.datasource.create_datasource(dict(datasource))
            actions.append(PushAction("datasource", uid, "created"))
        else:
            api.datasource.update_datasource_by_uid(uid, dict(datasource))
            actions.append(PushAction("datasource", uid, "updated"))
        try:
            api.folder.get_folder(FOLDER_UID)
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            actions.append(PushAction("folder", FOLDER_UID, "created"))
        for board in boards:
            try:
                api.dashboard.get_dashboard(board.uid)
                action: Literal["created", "updated"] = "updated"
            except GrafanaClientError as exc:
                if exc.status_code != 404:
                    raise
                action = "created"
            api.dashboard.update_dashboard(
                {
                    "dashboard": {**board.model, "id": None},
                    "folderUid": FOLDER_UID,
                    "overwrite": True,
                    "message": "osteotel grafana push",
                }
            )
            actions.append(PushAction("dashboard", board.uid, action))
    except GrafanaException as exc:
        status = exc.status_code or None
        raise GrafanaPushError(f"grafana refused: {exc}", status=status) from exc
    except niquests.exceptions.RequestException as exc:
        raise GrafanaPushError(f"grafana unreachable at {url}: {exc}") from exc
    return actions
