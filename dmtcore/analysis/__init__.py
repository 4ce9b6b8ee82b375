"""Analysis before training: which tasks to train together (`task_grouping`, DMT §2)."""
