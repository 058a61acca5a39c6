"""A fake ComfyUI 0.3.64 server for the test suite.

It is a real aiohttp process on 127.0.0.1 (``python -m tests.comfy_server --port 0 --root DIR``)
that answers like the recorded server in ``fixtures/transcripts``: the same routes (bare and under
``/api``), the same websocket messages in the same order, the same error bodies. Nodes are
simulated (no GPU): the ``accept_nodes`` test pack, a few core nodes and the FluxTrainer LoRA chain (Flux,
SDXL and SD 3.5: :mod:`tests.comfy_server.flux_nodes`).
It also answers the routes the web UI calls (settings, users, userdata, extensions, i18n, ...) and, given
``--frontend DIR``, serves a built ComfyUI frontend at ``/`` (:mod:`tests.comfy_server.frontend`).

Routes under ``/__test__/`` are not part of ComfyUI: they inject faults and change settings
(see :mod:`tests.comfy_server.faults`). Pytest fixtures live in :mod:`tests.comfy_server.plugin`.
"""
