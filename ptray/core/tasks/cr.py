"""CR (Hu & Liu 2004): is a customer-review sentence negative or positive? Training data 79% positive (the test set
is balanced): accuracy and macro-F1."""
from ptray.core.tasks.sentence import SentenceTask


class CR(SentenceTask):
    name = "cr"
    labels = ["0", "1"]
    label_words = ["terrible", "great"]
    unbalanced = True

    def folder_name(self) -> str:
        return "CR"
