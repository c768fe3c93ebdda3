"""SUBJ (Pang & Lee 2004): is a movie sentence subjective (a review) or objective (a plot summary)? Balanced;
accuracy."""
from ptray.core.tasks.sentence import SentenceTask


class SUBJ(SentenceTask):
    name = "subj"
    # 0: review snippets ("... it's robert duvall ! c'mon !"), 1: plot summaries ("there, she isn't getting any luck
    # in auditioning as a singer").
    labels = ["0", "1"]
    label_words = ["subjective", "objective"]
    template = "{sentence} This is"

    def folder_name(self) -> str:
        return "SUBJ"
