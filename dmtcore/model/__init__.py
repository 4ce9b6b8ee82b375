"""The multi-task model: column recipes (`backbones/`), transfer connections (`connections/`),
heads, the model that joins them (`multitask`), what the connections learned
(`connection_weights`) and the hard-sharing baseline."""
