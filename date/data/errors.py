"""The one error type of the data package."""


class DatasetError(ValueError):
    """Bad dataset input (missing file, malformed JSON, unknown id, ...).

    Raised before training starts wherever the problem can be seen up front. The message is one
    paragraph naming the file / config key / id at fault and saying what to do about it.
    """
