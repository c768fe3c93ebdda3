"""TREC (Li & Roth 2002): the coarse type of answer a question asks for. Six unbalanced classes (abbreviation is 2%):
accuracy and macro-F1."""
from ptray.core.tasks.sentence import SentenceTask


class TREC(SentenceTask):
    name = "trec"
    # The coarse classes in the data's order, read from its rows: 0 description ("What are liver enzymes ?"),
    # 1 entity, 2 abbreviation ("What does S.O.S. stand for ?"), 3 human, 4 location, 5 number.
    labels = ["0", "1", "2", "3", "4", "5"]
    # LM-BFF's words ("Expression" for abbreviation); its template puts the word first, which an LM cannot score.
    label_words = ["Description", "Entity", "Expression", "Human", "Location", "Number"]
    template = "Question: {sentence}\nAnswer type:"
    unbalanced = True

    def folder_name(self) -> str:
        return "TREC"
