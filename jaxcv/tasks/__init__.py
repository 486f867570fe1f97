"""Tasks (classification, detection, segmentation), chosen by `config.task`."""

import importlib

from jaxcv.registry import Registry

# name -> Task subclass; each module in jaxcv/tasks registers its task on import.
TASKS = Registry("task")
TASK_MODULES = ("classification", "detection", "segmentation", "localization", "promptable_segmentation")


def create_task(config):
    """The Task object for `config.task`."""
    if config.task not in TASKS and config.task in TASK_MODULES:
        importlib.import_module(f"jaxcv.tasks.{config.task}")
    if config.task not in TASKS:
        raise KeyError(f"unknown task {config.task!r}; registered: {', '.join(TASK_MODULES)}")
    return TASKS.get(config.task)(config)
