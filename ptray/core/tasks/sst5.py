"""SST-5 (Socher et al. 2013): the sentiment of a movie-review sentence on five grades. Unbalanced: accuracy and
macro-F1."""
from ptray.core.tasks.sentence import SentenceTask


class SST5(SentenceTask):
    name = "sst5"
    # 0 very negative ... 4 very positive.
    labels = ["0", "1", "2", "3", "4"]
    label_words = ["terrible", "bad", "okay", "good", "great"]
    unbalanced = True

    def folder_name(self) -> str:
        return "SST-5"
