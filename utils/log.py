"""The project's one logger, so every module prints through the same handler."""
import logging
import os

LOGGER = logging.getLogger("yolov5")


def _configure() -> None:
    if LOGGER.handlers:
        return
    rank = int(os.getenv("RANK", -1))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    # Only rank 0 (or a single process) speaks at INFO; other DDP ranks only warn.
    LOGGER.setLevel(logging.INFO if rank in (-1, 0) else logging.WARNING)
    LOGGER.propagate = False


_configure()


def colorstr(*parts: str) -> str:
    """Bold blue prefix like YOLOv5's colorstr('train: '); plain text when not a tty."""
    *styles, text = parts if len(parts) > 1 else ("blue", "bold", parts[0])
    codes = {"blue": "\033[34m", "bold": "\033[1m", "red": "\033[31m", "green": "\033[32m",
             "yellow": "\033[33m", "end": "\033[0m"}
    if not os.isatty(1) or os.getenv("NO_COLOR"):
        return text
    return "".join(codes[s] for s in styles) + f"{text}{codes['end']}"
