"""The task contract: what a plugin declares (`TaskSpec`, `HeadSpec`, `TaskData`), the names and
input spec users type, getting data into the model, pixel-level labels, losses and metrics, and
the pictures of dense labels."""
