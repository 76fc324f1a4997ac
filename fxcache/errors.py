"""The error every bad option raises: `OptionError`, a ValueError that reaches the caller of the compiled model
unwrapped.

Dynamo calls the backend (and so validates `torch.compile(..., options=...)`) only at the model's first call, and
wraps whatever the backend raises into `BackendCompilerFailed` -- except subclasses of its `ShortenTraceback`,
which it re-raises as they are (torch 2.13: `OutputGraph.call_user_compiler`, `convert_frame._compile`, and
`eval_frame`, after `remove_dynamo_frames()`). `OptionError` is both, so

    cm = torch.compile(model, backend="fxcache", options={"policy": "bogus"})
    try:
        cm(x)
    except ValueError as e:  # the OptionError itself, with its original message
        ...

It is raised with first_useful_frame=None (nothing to strip: safe wherever it is raised); the backend marks its
own frame on the way out, so that the traceback the user sees goes from their call straight to fxcache's code.
The class derives from `torch._dynamo.exc.ShortenTraceback`, and importing torch._dynamo costs most of a second,
so it is built on first use: `fxcache.errors.OptionError` (attribute access) or `option_error(message)`.
"""

from __future__ import annotations

import threading

__all__ = ["OptionError", "option_error"]

_lock = threading.Lock()
_cls: type | None = None


def _option_error_class() -> type:
    global _cls
    if _cls is None:
        with _lock:
            if _cls is None:
                from torch._dynamo.exc import ShortenTraceback

                class OptionError(ValueError, ShortenTraceback):
                    """A bad fxcache option; the message names the option and the values it accepts."""

                    def __init__(self, message: str) -> None:
                        ShortenTraceback.__init__(self, message, first_useful_frame=None)
                        self.message = message

                    def __str__(self) -> str:
                        # Dynamo appends a hint to args[0] ("Set TORCHDYNAMO_VERBOSE=1 ... reporting a bug to
                        # PyTorch") that is no help for a bad option: show the message as raised.
                        return self.message

                    def remove_dynamo_frames(self):
                        """The traceback from the frame the backend marked (`first_useful_frame`, set by
                        backend.fxcache_backend) on, without Dynamo's frames above it; unchanged if that
                        frame is not in it (where Dynamo's own version would fail) or with
                        TORCHDYNAMO_VERBOSE=1."""
                        from torch._dynamo import config

                        tb, frame = self.__traceback__, self.first_useful_frame
                        while frame is not None and tb is not None and not config.verbose:
                            if tb.tb_frame is frame:
                                return self.with_traceback(tb)
                            tb = tb.tb_next
                        return self

                    def __reduce__(self):  # pickles (ShortenTraceback's keyword-only argument would not)
                        return option_error, (self.message,)

                OptionError.__module__, OptionError.__qualname__ = __name__, "OptionError"
                _cls = OptionError
    return _cls


def option_error(message: str) -> ValueError:
    """An `OptionError` carrying `message`, to raise."""
    return _option_error_class()(message)


def __getattr__(name: str):
    if name == "OptionError":
        return _option_error_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
