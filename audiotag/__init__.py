"""audiotag: the most likely AudioSet labels for any audio, from one command or one call.

    import audiotag

    tagger = audiotag.Tagger()
    outcome = tagger.tag_file("clip.m4a")              # a path, bytes, or a binary file object
    print(outcome.prediction.tags[0].label)
    for record in audiotag.tag_many(["/data/crawl"]):  # the batch run, as `audiotag DIR`
        print(record["path"], record.get("tags", record.get("error")))

Names are imported on first use, so ``audiotag --help`` loads neither numpy nor onnxruntime.
"""

__version__ = "0.1.0"
__all__ = ["Tagger", "TagOptions", "Tag", "Category", "Prediction", "Segment", "Outcome", "Audio", "AudioError",
           "load", "tag_many", "record", "__version__"]

_WHERE = {  # public name -> the module that defines it
    "Tagger": "infer.tagger", "TagOptions": "options", "Tag": "infer.results", "Category": "infer.results",
    "Prediction": "infer.results", "Segment": "infer.results", "Outcome": "infer.results", "Audio": "decode",
    "AudioError": "errors", "load": "decode", "tag_many": "batch.run", "record": "records",
}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'audiotag' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_WHERE))
