"""Tasks (classification, detection, segmentation), chosen by `config.task`."""

from jaxcv.registry import Registry

# name -> Task subclass
TASKS = Registry("task")


def create_task(config):
    """The Task object for `config.task` (imports the task modules so they register)."""
    from jaxcv.tasks import classification, detection, segmentation  # noqa: F401

    return TASKS.get(config.task)(config)
