"""Label control: the labels a result may hold (``--only``, ``--exclude``) or the user's own (``--labels FILE``),
resolved against the model's labels and the AudioSet ontology it carries (stored at export time by
``scripts/model/export_model.py``, as the categories are).

A name is a display name or MID, of a label or of any ontology node, in any case; it means every label of the
node's subtree, the node's own included ("Music": the 150 labels under Music; a leaf such as "Bark": itself; an
abstract node that is no label, such as "Human voice": the labels under it). A user label scores as the best
(max) of its members' scores, and its tag names the member that gave that score (``mid``, ``index``).
"""

import difflib
from dataclasses import dataclass
from typing import Optional

import numpy as np


class LabelError(ValueError):
    """A name that is no label or node, or a choice that leaves nothing: ``option`` ("only", "exclude", "labels")
    and one line saying what, with the nearest real name."""

    def __init__(self, option: str, detail: str):
        super().__init__(f"{option}: {detail}")
        self.option, self.detail = option, detail


@dataclass(frozen=True)
class LabelView:
    """The labels results hold: ``names[j]`` scores as the best of the output indices ``table[j]`` (each row
    padded with its first member, which leaves the max as it is)."""

    names: tuple
    table: np.ndarray  # (labels, most members) output indices

    def best(self, values: np.ndarray) -> np.ndarray:
        """(labels,) the output index of each label's best member for per-label ``values`` (527,); ties: the
        member named first."""
        return self.table[np.arange(len(self.table)), np.argmax(values[self.table], axis=1)]

    def scores(self, scores: np.ndarray) -> np.ndarray:
        """(..., 527) scores to (..., labels): each label's best member's."""
        return scores[..., self.table].max(axis=-1)


class Vocabulary:
    """Every name the model knows, lower-cased, to the output indices it means."""

    def __init__(self, info):  # info: model.ModelInfo
        self.info = info
        self.indices = {}
        self.spelling = {}  # lower-cased -> as the model spells it (for suggestions)
        for index, (label, mid) in enumerate(zip(info.labels, info.mids)):
            self._add(label, [index])
            self._add(mid, [index])
        for name, mid, indices in info.ontology:  # a node means its subtree, a label included
            self._add(name, indices)
            self._add(mid, indices)
        self.widest = max(name.count(",") for name in self.indices) + 1  # 3: "Dishes, pots, and pans"

    def _add(self, name: str, indices) -> None:
        self.indices[name.lower()] = np.asarray(indices, np.int64)
        self.spelling[name.lower()] = name

    def split(self, text: str) -> list:
        """Comma-separated names, where a name may hold commas itself ("Male speech, man speaking"): the longest
        run of pieces that is a known name is one name."""
        pieces, names, start = text.split(","), [], 0
        while start < len(pieces):  # a name is at most ``widest`` pieces: a long list costs linear time
            end = next((end for end in range(min(len(pieces), start + self.widest), start, -1)
                        if ",".join(pieces[start:end]).strip().lower() in self.indices), start + 1)
            name = ",".join(pieces[start:end]).strip()
            if name:
                names.append(name)
            start = end
        return names

    def lookup(self, option: str, name: str, context: str = "") -> np.ndarray:
        indices = self.indices.get(name.lower())
        if indices is None:
            nearest = difflib.get_close_matches(name.lower(), self.indices, n=1, cutoff=0.0)
            hint = f"; did you mean {self.spelling[nearest[0]]!r}?" if nearest else ""
            if not self.info.ontology:  # a model exported before the ontology was stored knows labels only
                hint += " (this model has no ontology nodes: export it again with scripts/model/export_model.py)"
            raise LabelError(option, f"unknown label {name!r}{context}{hint}")
        if not len(indices):
            raise LabelError(option, f"{name!r}{context} is in the AudioSet ontology but the model has no label "
                                     "under it")
        return indices

    def names(self, option: str, text: str) -> np.ndarray:
        """The output indices the names in ``text`` mean, sorted."""
        found = {int(i) for name in self.split(text) for i in self.lookup(option, name)}
        return np.array(sorted(found), np.int64)  # not np.unique: it needs numpy.ma, which the binary leaves out


def resolve(vocabulary: Vocabulary, options) -> Optional[LabelView]:
    """The view ``options`` (TagOptions) ask for; None for all 527 labels as they are. Raises LabelError."""
    if options.labels:
        members = {}  # user label -> output indices, in the file's order
        for user, name in options.labels:
            indices = vocabulary.lookup("labels", name, f" (for {user!r})")
            members[user] = np.concatenate([members.get(user, np.zeros(0, np.int64)), indices])
        return _view(tuple(members), [list(dict.fromkeys(m.tolist())) for m in members.values()])
    if not (options.only or options.exclude):
        return None
    count = len(vocabulary.info.labels)
    kept = vocabulary.names("only", options.only) if options.only else np.arange(count)
    if options.exclude:
        removed = set(vocabulary.names("exclude", options.exclude).tolist())
        kept = np.array([i for i in kept.tolist() if i not in removed], np.int64)
    if not len(kept):
        raise LabelError("exclude", f"{options.exclude!r} leaves no label to give"
                         + (f" of {options.only!r}" if options.only else ""))
    return _view(tuple(vocabulary.info.labels[i] for i in kept), [[i] for i in kept.tolist()])


def _view(names: tuple, members: list) -> LabelView:
    width = max(len(m) for m in members)
    table = np.array([m + [m[0]] * (width - len(m)) for m in members], np.int64)
    table.setflags(write=False)
    return LabelView(names, table)
