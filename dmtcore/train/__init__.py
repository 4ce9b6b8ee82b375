"""Training: the loop shared by add-task, train and remove-task's reconnection (`loop`), the
feature cache of frozen columns, metrics over a split (`evaluation`) and the choice of a warm
start for a new column."""
