"""The ``signal`` functions without the cost of importing ``signal``.

``import signal`` builds its enums (importing :mod:`enum`, :mod:`functools`...), which is most
of what ``import daemonctx`` would cost.  The C module ``_signal`` behind it has the same
functions and constants, returning plain ints.  Type checkers see the real module.
"""

TYPE_CHECKING = False  # see daemonctx/__init__.py: typing is not imported at run time
if TYPE_CHECKING:
    import signal  # re-exported through __all__
else:
    try:
        import _signal as signal
    except ImportError:  # pragma: no cover - other interpreters
        import signal

__all__ = ["signal"]
