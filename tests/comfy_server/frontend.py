"""The routes the ComfyUI web UI calls, so the real frontend can run against the fake server.

Ports of ComfyUI 0.3.64 (same checks in the same order, same bodies), single-user mode (no
``--multi-user``), as a default install answers:

* ``server.py``: ``GET /`` (the web root's ``index.html``, no-cache headers), ``GET /extensions``
  (the web root's ``extensions/**/*.js``) and the web root served as static files at ``/``;
* ``middleware/cache_middleware.py``: ``cache_control`` (``.js``/``.css``/``index*.json`` no-cache,
  images cached a day, or an hour when 404);
* ``app/user_manager.py``: ``/users``, ``/userdata``, ``/v2/userdata``, ``/userdata/{file}`` (GET, POST,
  DELETE) and ``/userdata/{file}/move/{dest}``, files under ``<root>/user/default``;
* ``app/app_settings.py``: ``/settings`` and ``/settings/{id}`` (``comfy.settings.json`` in that folder);
* ``app/model_manager.py``: ``/experiment/models`` and ``/experiment/models/{folder}``;
* ``app/custom_node_manager.py``: ``/workflow_templates`` and ``/i18n`` (from ``<root>/custom_nodes``).

Not ported: ``/experiment/models/preview/...`` (model preview images), ``/upload/mask``, and the
``/templates`` and ``/docs`` static folders, which come from the optional packages
``comfyui-workflow-templates`` and ``comfyui-embedded-docs`` (a server without them, as here, answers
those paths from the web root: 404). Like every route in :func:`tests.comfy_server.app.make_app`, the
API routes answer bare and under ``/api``; the web root is served only when the server was given one
(``--frontend DIR``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib import parse

from aiohttp import web

from tests.comfy_server.paths import LEGACY_ALIASES, SUPPORTED_PT_EXTENSIONS, ComfyPaths

log = logging.getLogger("comfy_server")

DEFAULT_USER = "default"
EXTRA_LOCALE_FILES = ("nodeDefs.json", "commands.json", "settings.json")
EXAMPLE_WORKFLOW_FOLDER_NAMES = ("example_workflows", "example", "examples", "workflow", "workflows")
ONE_HOUR = 3600
ONE_DAY = 86400
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@web.middleware
async def cache_control(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``middleware/cache_middleware.cache_control``."""
    response = await handler(request)
    path_filename = request.path.rsplit("/", 1)[-1]
    is_entry_point = path_filename.startswith("index") and path_filename.endswith(".json")
    if request.path.endswith(".js") or request.path.endswith(".css") or is_entry_point:
        response.headers.setdefault("Cache-Control", "no-cache")
        return response
    if not request.path.lower().endswith(IMG_EXTENSIONS):
        return response
    if response.status == 404:
        response.headers.setdefault("Cache-Control", f"public, max-age={ONE_HOUR}")
    elif response.status in (200, 201, 202, 203, 204, 205, 206, 301, 308):
        response.headers.setdefault("Cache-Control", f"public, max-age={ONE_DAY}")
    elif response.status in (302, 303, 307):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _file_info(path: str, relative_to: str) -> dict[str, Any]:
    """``user_manager.get_file_info``."""
    return {
        "path": os.path.relpath(path, relative_to).replace(os.sep, "/"),
        "size": os.path.getsize(path),
        "modified": os.path.getmtime(path),
        "created": os.path.getctime(path),
    }


def _merge_json_recursive(base: Any, update: Any) -> Any:
    """``utils/json_util.merge_json_recursive``."""
    if not isinstance(base, dict) or not isinstance(update, dict):
        if isinstance(base, list) and isinstance(update, list):
            return base + update
        return update
    merged = base.copy()
    for key, value in update.items():
        merged[key] = _merge_json_recursive(merged[key], value) if key in merged else value
    return merged


def _safe_load_json_file(file_path: str) -> Any:
    """``custom_node_manager.safe_load_json_file``."""
    if not os.path.exists(file_path):
        return {}
    try:
        with open(file_path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError:
        log.error("Error loading %s", file_path)
        return {}


class UserManager:
    """``app/user_manager.UserManager`` + ``app/app_settings.AppSettings`` without ``--multi-user``."""

    def __init__(self, paths: ComfyPaths) -> None:
        self.user_directory = str(paths.root / "user")
        os.makedirs(self.user_directory, exist_ok=True)
        self.users: dict[str, str] = {DEFAULT_USER: DEFAULT_USER}

    def users_file(self) -> str:
        return os.path.join(self.user_directory, "users.json")

    def request_user_id(self, request: web.Request) -> str:
        user = DEFAULT_USER  # the Comfy-User header counts only with --multi-user
        if user not in self.users:
            raise KeyError("Unknown user: " + user)
        return user

    def request_user_filepath(
        self, request: web.Request, file: str | None, create_dir: bool = True
    ) -> str | None:
        root_dir = self.user_directory
        user = self.request_user_id(request)
        path = user_root = os.path.abspath(os.path.join(root_dir, user))
        if os.path.commonpath((root_dir, user_root)) != root_dir:
            return None
        if file is not None:
            if "%" in file:
                file = parse.unquote(file)
            path = os.path.abspath(os.path.join(user_root, file))
            if os.path.commonpath((user_root, path)) != user_root:
                return None
        parent = os.path.split(path)[0]
        if create_dir and not os.path.exists(parent):
            os.makedirs(parent, exist_ok=True)
        return path

    def add_user(self, name: str) -> str:
        name = name.strip()
        if not name:
            raise ValueError("username not provided")
        user_id = re.sub("[^a-zA-Z0-9-_]+", "-", name) + "_" + str(uuid.uuid4())
        self.users[user_id] = name
        with open(self.users_file(), "w") as f:
            json.dump(self.users, f)
        return user_id

    # --- app_settings ------------------------------------------------------------------------------

    def get_settings(self, request: web.Request) -> Any:
        try:
            file = self.request_user_filepath(request, "comfy.settings.json")
        except KeyError as e:
            log.error("User settings not found.")
            raise web.HTTPUnauthorized() from e
        if file is not None and os.path.isfile(file):
            try:
                with open(file) as f:
                    return json.load(f)
            except (OSError, ValueError):  # upstream: a bare except around open + json.load
                log.error("The user settings file is corrupted: %s", file)
                return {}
        return {}

    def save_settings(self, request: web.Request, settings: Any) -> None:
        file = self.request_user_filepath(request, "comfy.settings.json")
        assert file is not None
        with open(file, "w") as f:
            f.write(json.dumps(settings, indent=4))

    def user_data_path(self, request: web.Request, check_exists: bool = False, param: str = "file") -> Any:
        file = request.match_info.get(param, None)
        if not file:
            return web.Response(status=400)
        path = self.request_user_filepath(request, file)
        if not path:
            return web.Response(status=403)
        if check_exists and not os.path.exists(path):
            return web.Response(status=404)
        return path


def add_routes(routes: web.RouteTableDef, paths: ComfyPaths, web_root: str | None) -> None:
    """Add the frontend's API routes to ``routes`` (which :func:`make_app` then mirrors under ``/api``)."""
    users = UserManager(paths)

    # --- server.py -------------------------------------------------------------------------------

    if web_root is not None:
        root = web_root

        @routes.get("/")
        async def get_root(request: web.Request) -> web.StreamResponse:
            response = web.FileResponse(os.path.join(root, "index.html"))
            response.headers["Cache-Control"] = "no-cache"
            response.headers["Pragma"] = "no-cache"
            response.headers["Expires"] = "0"
            return response

    @routes.get("/extensions")
    async def get_extensions(request: web.Request) -> web.Response:
        if web_root is None:
            return web.json_response([])
        files = glob.glob(os.path.join(glob.escape(web_root), "extensions/**/*.js"), recursive=True)
        return web.json_response(["/" + os.path.relpath(f, web_root).replace("\\", "/") for f in files])

    # --- app_settings.py -------------------------------------------------------------------------

    @routes.get("/settings")
    async def get_settings(request: web.Request) -> web.Response:
        return web.json_response(users.get_settings(request))

    @routes.get("/settings/{id}")
    async def get_setting(request: web.Request) -> web.Response:
        value = None
        settings = users.get_settings(request)
        setting_id = request.match_info.get("id", None)
        if setting_id and setting_id in settings:
            value = settings[setting_id]
        return web.json_response(value)

    @routes.post("/settings")
    async def post_settings(request: web.Request) -> web.Response:
        settings = users.get_settings(request)
        new_settings = await request.json()
        users.save_settings(request, {**settings, **new_settings})
        return web.Response(status=200)

    @routes.post("/settings/{id}")
    async def post_setting(request: web.Request) -> web.Response:
        setting_id = request.match_info.get("id", None)
        if not setting_id:
            return web.Response(status=400)
        settings = users.get_settings(request)
        settings[setting_id] = await request.json()
        users.save_settings(request, settings)
        return web.Response(status=200)

    # --- user_manager.py -------------------------------------------------------------------------

    @routes.get("/users")
    async def get_users(request: web.Request) -> web.Response:
        user_dir = users.request_user_filepath(request, None, create_dir=False)
        migrated = user_dir is not None and os.path.exists(user_dir)
        return web.json_response({"storage": "server", "migrated": migrated})

    @routes.post("/users")
    async def post_users(request: web.Request) -> web.Response:
        body = await request.json()
        username = body["username"]
        if username in users.users.values():
            return web.json_response({"error": "Duplicate username."}, status=400)
        return web.json_response(users.add_user(username))

    @routes.get("/userdata")
    async def listuserdata(request: web.Request) -> web.Response:
        directory = request.rel_url.query.get("dir", "")
        if not directory:
            return web.Response(status=400, text="Directory not provided")
        path = users.request_user_filepath(request, directory)
        if not path:
            return web.Response(status=403, text="Invalid directory")
        if not os.path.exists(path):
            return web.Response(status=404, text="Directory not found")
        recurse = request.rel_url.query.get("recurse", "").lower() == "true"
        full_info = request.rel_url.query.get("full_info", "").lower() == "true"
        split_path = request.rel_url.query.get("split", "").lower() == "true"
        if recurse:
            pattern = os.path.join(glob.escape(path), "**", "*")
        else:
            pattern = os.path.join(glob.escape(path), "*")

        def process_full_path(full_path: str) -> Any:
            if full_info:
                return _file_info(full_path, path)
            rel_path = os.path.relpath(full_path, path).replace(os.sep, "/")
            if split_path:
                return [rel_path, *rel_path.split("/")]
            return rel_path

        results = [
            process_full_path(full_path)
            for full_path in glob.glob(pattern, recursive=recurse)
            if os.path.isfile(full_path)
        ]
        return web.json_response(results)

    @routes.get("/v2/userdata")
    async def list_userdata_v2(request: web.Request) -> web.Response:
        requested_rel_path = parse.unquote(request.rel_url.query.get("path", ""))
        try:
            base_user_path = users.request_user_filepath(request, None, create_dir=False)
            if requested_rel_path:
                target_abs_path = users.request_user_filepath(request, requested_rel_path, create_dir=False)
            else:
                target_abs_path = base_user_path
        except KeyError as e:
            log.warning("Access denied for user: %s", e)
            return web.Response(status=403, text="Invalid user specified in request")
        if not target_abs_path or base_user_path is None:
            return web.Response(status=400, text="Invalid path requested")
        if not os.path.exists(target_abs_path):
            if target_abs_path == base_user_path:
                return web.json_response([])
            return web.Response(status=404, text="Requested path not found")
        if not os.path.isdir(target_abs_path):
            return web.Response(status=400, text="Requested path is not a directory")
        results: list[dict[str, Any]] = []
        try:
            for dirpath, dirs, files in os.walk(target_abs_path, topdown=True):
                for dir_name in dirs:
                    dir_path = os.path.join(dirpath, dir_name)
                    rel_path = os.path.relpath(dir_path, base_user_path).replace(os.sep, "/")
                    results.append({"name": dir_name, "path": rel_path, "type": "directory"})
                for file_name in files:
                    file_path = os.path.join(dirpath, file_name)
                    rel_path = os.path.relpath(file_path, base_user_path).replace(os.sep, "/")
                    entry: dict[str, Any] = {"name": file_name, "path": rel_path, "type": "file"}
                    try:
                        stats = os.stat(file_path)
                        entry["size"] = stats.st_size
                        entry["modified"] = stats.st_mtime
                    except OSError as stat_error:
                        log.warning("Could not stat file %s: %s", file_path, stat_error)
                    results.append(entry)
        except OSError as e:
            log.error("Error listing directory %s: %s", target_abs_path, e)
            return web.Response(status=500, text="Error reading directory contents")
        results.sort(key=lambda x: (x["type"] != "directory", x["name"].lower()))
        return web.json_response(results)

    @routes.get("/userdata/{file}")
    async def getuserdata(request: web.Request) -> web.StreamResponse:
        path = users.user_data_path(request, check_exists=True)
        if not isinstance(path, str):
            return path  # type: ignore[no-any-return]
        return web.FileResponse(path)

    @routes.post("/userdata/{file}")
    async def post_userdata(request: web.Request) -> web.Response:
        path = users.user_data_path(request)
        if not isinstance(path, str):
            return path  # type: ignore[no-any-return]
        overwrite = request.query.get("overwrite", "true") != "false"
        full_info = request.query.get("full_info", "false").lower() == "true"
        if not overwrite and os.path.exists(path):
            return web.Response(status=409, text="File already exists")
        try:
            body = await request.read()
            _write_file(path, body)
        except OSError as e:
            log.warning("Error saving file '%s': %s", path, e)
            return web.Response(
                status=400, reason='Invalid filename. Please avoid special characters like :\\/*?"<>|'
            )
        user_path = users.request_user_filepath(request, None)
        assert user_path is not None
        resp: Any = _file_info(path, user_path) if full_info else os.path.relpath(path, user_path)
        return web.json_response(resp)

    @routes.delete("/userdata/{file}")
    async def delete_userdata(request: web.Request) -> web.Response:
        path = users.user_data_path(request, check_exists=True)
        if not isinstance(path, str):
            return path  # type: ignore[no-any-return]
        os.remove(path)
        return web.Response(status=204)

    @routes.post("/userdata/{file}/move/{dest}")
    async def move_userdata(request: web.Request) -> web.Response:
        source = users.user_data_path(request, check_exists=True)
        if not isinstance(source, str):
            return source  # type: ignore[no-any-return]
        dest = users.user_data_path(request, check_exists=False, param="dest")
        if not isinstance(dest, str):  # upstream tests `source` again here, then fails on a non-path
            raise TypeError("expected str, bytes or os.PathLike object, not Response")
        overwrite = request.query.get("overwrite", "true") != "false"
        full_info = request.query.get("full_info", "false").lower() == "true"
        if not overwrite and os.path.exists(dest):
            return web.Response(status=409, text="File already exists")
        log.info("moving '%s' -> '%s'", source, dest)
        shutil.move(source, dest)
        user_path = users.request_user_filepath(request, None)
        assert user_path is not None
        resp: Any = _file_info(dest, user_path) if full_info else os.path.relpath(dest, user_path)
        return web.json_response(resp)

    # --- model_manager.py ------------------------------------------------------------------------

    @routes.get("/experiment/models")
    async def get_model_folders(request: web.Request) -> web.Response:
        folder_black_list = ("configs", "custom_nodes")
        folders = paths.folder_paths()
        return web.json_response(
            [
                {"name": name, "folders": dirs}
                for name, dirs in folders.items()
                if name not in folder_black_list
            ]
        )

    @routes.get("/experiment/models/{folder}")
    async def get_all_models(request: web.Request) -> web.Response:
        folder = request.match_info.get("folder", "")
        if not paths.has_folder(folder):
            return web.Response(status=404)
        return web.json_response(model_file_list(paths, folder))

    # --- custom_node_manager.py ------------------------------------------------------------------

    custom_nodes = paths.folder_paths().get("custom_nodes", [])

    @routes.get("/workflow_templates")
    async def get_workflow_templates(request: web.Request) -> web.Response:
        files: list[str] = []
        for folder in custom_nodes:
            for folder_name in EXAMPLE_WORKFLOW_FOLDER_NAMES:
                files.extend(glob.glob(os.path.join(folder, f"*/{folder_name}/*.json")))
        templates: dict[str, list[str]] = {}
        for file in files:
            custom_nodes_name = os.path.basename(os.path.dirname(os.path.dirname(file)))
            templates.setdefault(custom_nodes_name, []).append(os.path.splitext(os.path.basename(file))[0])
        return web.json_response(templates)

    @routes.get("/i18n")
    async def get_i18n(request: web.Request) -> web.Response:
        return web.json_response(build_translations(custom_nodes))


def model_file_list(paths: ComfyPaths, folder: str) -> list[dict[str, Any]]:
    """``ModelFileManager.get_model_file_list`` (its cache never hits upstream, so none here)."""
    folder = LEGACY_ALIASES.get(folder, folder)
    out: list[dict[str, Any]] = []
    for index, directory in enumerate(paths.folder_paths()[folder]):
        if not os.path.isdir(directory):
            continue
        for dirpath, subdirs, filenames in os.walk(directory, followlinks=True, topdown=True):
            subdirs[:] = [d for d in subdirs if d != ".git" and not d.startswith(".")]
            names = sorted(
                f
                for f in filenames
                if not f.startswith(".") and os.path.splitext(f)[-1].lower() in SUPPORTED_PT_EXTENSIONS
            )
            for file_name in names:
                full_path = os.path.join(dirpath, file_name)
                try:
                    out.append({
                        "name": os.path.relpath(full_path, directory),
                        "pathIndex": index,
                        "modified": os.path.getmtime(full_path),
                        "created": os.path.getctime(full_path),
                        "size": os.path.getsize(full_path),
                    })
                except OSError as e:
                    log.warning("Warning: Unable to access %s. Error: %s. Skipping this file.", file_name, e)
    return out


def build_translations(custom_nodes: list[str]) -> dict[str, Any]:
    """``CustomNodeManager.build_translations``: ``custom_nodes/*/locales/<lang>/main.json`` and extras."""
    translations: dict[str, Any] = {}
    for folder in custom_nodes:
        for custom_node_dir in sorted(glob.glob(os.path.join(folder, "*/"))):
            locales_dir = os.path.join(custom_node_dir, "locales")
            if not os.path.exists(locales_dir):
                continue
            for lang_dir in glob.glob(os.path.join(locales_dir, "*/")):
                lang_code = os.path.basename(os.path.dirname(lang_dir))
                translations.setdefault(lang_code, {})
                node_translations = _safe_load_json_file(os.path.join(lang_dir, "main.json"))
                for extra_file in EXTRA_LOCALE_FILES:
                    json_data = _safe_load_json_file(os.path.join(lang_dir, extra_file))
                    if json_data:
                        node_translations[extra_file.split(".")[0]] = json_data
                if node_translations:
                    merged = _merge_json_recursive(translations[lang_code], node_translations)
                    translations[lang_code] = merged
    return translations


def add_static(app: web.Application, web_root: str) -> None:
    """``web.static('/', web_root)``, added last as upstream does (after every API route)."""
    app.add_routes([web.static("/", web_root)])
