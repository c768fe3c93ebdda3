"""COPA: pick the more plausible cause or effect of a premise. Two candidates scored; accuracy."""
from ptray.core.tasks.base import Example, Task, UnknownLabel


class COPA(Task):
    name = "copa"
    labels = None
    fields = ("premise", "choice1", "choice2", "question", "label")

    def folder_name(self) -> str:
        return "COPA"

    def to_examples(self, row):
        if row["label"] not in (0, 1):
            raise UnknownLabel(row["label"])
        connective = "because" if row["question"] == "cause" else "so"
        premise = row["premise"].rstrip(".")
        choices = [_lower_first(row["choice1"]), _lower_first(row["choice2"])]
        return [
            Example(
                f"{premise} {connective}",
                None,
                int(row["label"]),
                choices=choices,
                lm_source=f"{premise} {connective}",
            )
        ]


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s and not s.startswith("I ") else s
