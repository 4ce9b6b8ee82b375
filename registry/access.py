"""Logging in to a team's MLflow server: what a refusal means, in one line, and asking before
any training whether this user may publish.

dmt takes MLflow's own credentials (`MLFLOW_TRACKING_USERNAME`, `MLFLOW_TRACKING_PASSWORD`,
read by MLflow's HTTP client); it never stores them. A URI can carry credentials too
(`http://user:password@host`, `postgresql://user:password@host/db`): `safe_uri` drops the
password before a URI goes into any message, record or tag.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

from dmtcore.errors import AccessRefusedError

USERNAME = "MLFLOW_TRACKING_USERNAME"
# MLflow's basic-auth app: a user's effective permission on one resource (MLflow 3.x).
PERMISSION_ENDPOINT = "/api/3.0/mlflow/users/permissions/get"
CAN_PUBLISH = ("EDIT", "MANAGE")
# MLflow's REST failures name the endpoint and the HTTP status.
REST_FAILURE = re.compile(r"endpoint (\S+) failed with error code (\d{3})")
# What a refused endpoint was for, and the permission it needs.
ACTIONS = (
    (
        "model-versions/create",
        "register a new version of the model",
        "EDIT on the registered model",
    ),
    ("registered-models/alias", "move an alias of the model", "EDIT on the registered model"),
    ("registered-models/create", "create the registered model", "permission to create models"),
    ("set-tag", "tag the registered model", "EDIT on the registered model"),
    ("runs/create", "create a run in the store's experiment", "EDIT on the experiment"),
    ("experiments/create", "create the store's experiment", "permission to create experiments"),
    ("mlflow-artifacts", "upload the model's files", "EDIT on the experiment"),
)


def safe_uri(uri: str) -> str:
    """`uri` without a password in it: 'http://alice:pw@host' becomes 'http://alice@host'."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = f"{parts.username}@{host}" if parts.username else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def username() -> str | None:
    """Who dmt talks to the server as (MLflow's own variable), if anyone."""
    return os.environ.get(USERNAME) or None


def status_of(exc: BaseException) -> tuple[int, str] | None:
    """(HTTP status, endpoint) of an MLflow REST refusal (401 or 403), else None."""
    match = REST_FAILURE.search(str(exc))
    if match and match.group(2) in ("401", "403"):
        return int(match.group(2)), match.group(1)
    code = getattr(exc, "error_code", "")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return (401 if code == "UNAUTHENTICATED" else 403), ""
    return None


def explain(exc: BaseException, uri: str) -> str | None:
    """One line saying which server refused whom, what, and how to get in; None when `exc` is
    not a refusal. Never includes a password (the server's answer holds none either)."""
    refused = status_of(exc)
    if refused is None:
        return None
    status, endpoint = refused
    server, user = safe_uri(uri), username()
    if status == 401:
        if user is None:
            return (
                f"MLflow at {server} asks for a login (HTTP 401) and none was given: set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            )
        return (
            f"MLflow at {server} refused the login of user {user!r} (HTTP 401: wrong username "
            "or password): check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    action, needed = next(
        ((a, n) for key, a, n in ACTIONS if key in endpoint), (f"call {endpoint}", "permission")
    )
    return (
        f"MLflow at {server} refused user {user or '(anonymous)'!r} permission to {action} "
        f"(HTTP 403 on {endpoint or 'the request'}): ask its admin for {needed}"
    )


def refused_error(exc: BaseException, uri: str) -> AccessRefusedError | None:
    """`explain` as the error the CLI exits 10 with, or None."""
    message = explain(exc, uri)
    return AccessRefusedError(message) if message is not None else None


def check_can_publish(client: Any, uri: str, model: str) -> None:
    """Before any training: refuse when the server's basic-auth app says this user may read but
    not edit the existing registered model `model` (publishing would be refused after the work).
    A server without the auth app, no login, or a model that does not exist yet (any user may
    create one) pass; a refusal that only comes later is handled at publish time."""
    user = username()
    if user is None or not uri.startswith(("http://", "https://")):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        client.get_registered_model(model)
    except Exception:
        return  # not there yet (or not visible): creating it is allowed, or refused later
    params = {"username": user, "resource_type": "registered_model", "resource_id": model}
    try:
        response = http_request(
            get_default_host_creds(uri), PERMISSION_ENDPOINT, "GET", params=params
        )
    except Exception:
        return  # the question could not be asked: the publish itself will say
    if response.status_code != 200:
        return  # no basic-auth app (404), or it does not answer this: nothing to tell
    permission = str(response.json().get("permission", ""))
    if permission and permission not in CAN_PUBLISH:
        raise AccessRefusedError(
            f"MLflow at {safe_uri(uri)} gives user {user!r} {permission} on registered model "
            f"{model!r}: publishing a version needs EDIT or MANAGE; nothing was trained; ask "
            "its admin for EDIT, or pass --no-register (or --no-tracking)"
        )
