"""MPQA (Wiebe et al. 2005): is an opinion phrase negative or positive? Training data 73% negative (the test set is
balanced): accuracy and macro-F1."""
from ptray.core.tasks.sentence import SentenceTask


class MPQA(SentenceTask):
    name = "mpqa"
    labels = ["0", "1"]
    label_words = ["terrible", "great"]
    unbalanced = True

    def folder_name(self) -> str:
        return "MPQA"
