"""Web demo (Gradio): ``lime-edit serve``.

Needs the ``web`` extra (``pip install 'lime-edit[web]'``).  Importing this
package is cheap; Gradio and the model load only when the app is built::

    from lime_edit import LimePipeline
    from lime_edit.web import build_app, launch

    demo = build_app(LimePipeline.from_pretrained("demo"), model_name="demo")
    launch(demo, port=7860)
"""

from __future__ import annotations

from typing import Any

__all__ = ["LimeWebApp", "build_app", "launch"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
