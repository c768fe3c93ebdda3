"""MR (Pang & Lee 2005): is a movie-review sentence negative or positive? Balanced; accuracy."""
from ptray.core.tasks.sentence import SentenceTask


class MR(SentenceTask):
    name = "mr"
    labels = ["0", "1"]
    label_words = ["terrible", "great"]

    def folder_name(self) -> str:
        return "MR"
