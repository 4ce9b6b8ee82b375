"""Building the plugin manager: built-ins, installed entry points and `-p` plugins.

Like pytest, the engine's own pieces (backbones, connection kinds) are plain modules registered
by the same call that loads third-party plugins; the built-in *task* plugins in `plugins/` are
installed entry points of the `dmt` group, exactly like a third party's.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from dmtcore.errors import ConflictError, DmtError, PluginError
from dmtcore.hooks import specs as hookspecs
from dmtcore.hooks.kinds import Kinds

ENTRY_POINT_GROUP = "dmt"
DISABLE_AUTOLOAD_ENV = "DMT_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "DMT_PLUGINS"
BUILTIN_PLUGINS = (
    "dmtcore.model.backbones.dmt_cnn",
    "dmtcore.model.backbones.resnet",
    "dmtcore.model.backbones.vgg",
    "dmtcore.model.backbones.alexnet",
    "dmtcore.model.backbones.mobilenet",
    "dmtcore.model.backbones.efficientnet",
    "dmtcore.model.backbones.convnext",
    "dmtcore.model.backbones.timm_models",
    "dmtcore.model.connections.none",
    "dmtcore.model.connections.ttc",
    "dmtcore.model.connections.nddr",
    "dmtcore.model.connections.cross_stitch",
    "dmtcore.train.weighting.equal",
    "dmtcore.train.weighting.uncertainty",
    "dmtcore.train.weighting.dwa",
    "dmtcore.train.weighting.gradnorm",
    "dmtcore.train.weighting.pcgrad",
    "dmtcore.train.weighting.aligned_mtl",
)
REGISTRATION_HOOKS = (
    "dmt_register_backbones",
    "dmt_register_connections",
    "dmt_register_weightings",
    "dmt_register_tasks",
)


@dataclass
class PluginInfo:
    """One loaded plugin, as `dmt plugins` shows it."""

    name: str
    module: str
    origin: str  # 'builtin', 'entry point', or '-p'
    version: str | None = None
    hooks: list[str] = field(default_factory=list)


@dataclass
class PluginHost:
    """The plugin manager with its hooks, the filled kinds, and what was loaded from where."""

    manager: pluggy.PluginManager
    kinds: Kinds
    plugins: list[PluginInfo]

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def register(self, plugin: object, name: str) -> None:
        """Add an observer (e.g. the MLflow tracker) after start-up; it only gets lifecycle hooks."""
        self.manager.register(plugin, name=name)

    def unregister(self, plugin: object) -> None:
        """Remove an observer `register` added (the MLflow tracker, when its operation ends)."""
        self.manager.unregister(plugin)


def autoload_disabled_by_env() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def plugins_from_env() -> list[str]:
    return [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]


def import_plugin(spec: str) -> tuple[str, ModuleType]:
    """Import a `-p` plugin: a dotted module name, or a path to a .py file."""
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist")
        name = path.stem
        module_name = f"dmt_plugin_{name}"
        try:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            loader_spec.loader.exec_module(module)
        except DmtError as exc:
            sys.modules.pop(module_name, None)
            raise PluginError(f"plugin {name!r} ({path}) failed to import: {exc}") from exc
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise PluginError(
                f"plugin {name!r} ({path}) failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        return name, module
    try:
        return spec, importlib.import_module(spec)
    except Exception as exc:
        raise PluginError(f"plugin {spec!r} failed to import: {type(exc).__name__}: {exc}") from exc


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in seen:  # the same distribution visible twice on sys.path
            seen.add(ep.name)
            yield ep


def create_plugin_host(plugins: Sequence[str] = (), autoload: bool | None = None) -> PluginHost:
    """Load built-ins, then entry points (unless autoload is off), then `-p` plugins, and run the
    registration hooks. `plugins` entries of the form 'no:NAME' block a plugin by name."""
    if autoload is None:
        autoload = not autoload_disabled_by_env()
    requested = [*plugins_from_env(), *plugins]
    blocked = {p[3:] for p in requested if p.startswith("no:")}
    manager = pluggy.PluginManager("dmt")
    manager.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []

    def add(name: str, module: ModuleType, origin: str, version: str | None = None) -> None:
        if name in blocked or manager.is_registered(module):
            return
        if manager.has_plugin(name):
            raise PluginError(f"two plugins are named {name!r}; block one with '-p no:{name}'")
        manager.register(module, name=name)
        hooks = sorted(h.name for h in manager.get_hookcallers(module) or [])
        infos.append(PluginInfo(name, module.__name__, origin, version, hooks))

    for module_name in BUILTIN_PLUGINS:
        add(
            module_name.rsplit(".", 1)[-1].replace("_", "-"),
            importlib.import_module(module_name),
            "builtin",
        )
    if autoload:
        for ep in _entry_points():
            if ep.name in blocked:
                continue
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} (entry point {ep.value!r}) failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            version = ep.dist.version if ep.dist is not None else None
            add(ep.name, module, "entry point", version)
    for spec in requested:
        if not spec.startswith("no:"):
            name, module = import_plugin(spec)
            add(name, module, "-p")

    kinds = Kinds()
    for hook_name in REGISTRATION_HOOKS:
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            kinds.current_plugin = impl.plugin_name
            try:
                impl.function(**{name: kinds for name in impl.argnames})
            except (PluginError, ConflictError):
                raise
            except DmtError as exc:
                raise PluginError(f"plugin {impl.plugin_name!r}: {exc}") from exc
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc
    return PluginHost(manager, kinds, infos)
