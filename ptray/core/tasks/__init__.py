"""Tasks by the name used in YAML (`task.name`). Adding a task is adding a module and a line here."""
from ptray.core.tasks.base import Example, Task
from ptray.core.tasks.boolq import BoolQ
from ptray.core.tasks.cb import CB
from ptray.core.tasks.copa import COPA
from ptray.core.tasks.cr import CR
from ptray.core.tasks.custom import Custom, Hub
from ptray.core.tasks.mpqa import MPQA
from ptray.core.tasks.mr import MR
from ptray.core.tasks.multirc import MultiRC
from ptray.core.tasks.record import ReCoRD
from ptray.core.tasks.rte import RTE
from ptray.core.tasks.sst5 import SST5
from ptray.core.tasks.subj import SUBJ
from ptray.core.tasks.trec import TREC
from ptray.core.tasks.wic import WiC
from ptray.core.tasks.wsc import WSC

TASKS: dict[str, type[Task]] = {
    "boolq": BoolQ,
    "cb": CB,
    "copa": COPA,
    "multirc": MultiRC,
    "record": ReCoRD,
    "rte": RTE,
    "wic": WiC,
    "wsc": WSC,
    "mr": MR,
    "cr": CR,
    "subj": SUBJ,
    "trec": TREC,
    "mpqa": MPQA,
    "sst5": SST5,
    "custom": Custom,
    "hub": Hub,
}


def build_task(config) -> Task:
    return TASKS[config.name](config)


__all__ = ["Example", "Task", "TASKS", "build_task"]
