"""The plugin system: every hook (`specs`), the kinds plugins register through them (`kinds`:
tasks, backbones, connection kinds), the host that loads built-ins, entry points and `-p`
plugins (`host`), the records lifecycle hooks receive (`runinfo`) and the catalogue of tasks."""
