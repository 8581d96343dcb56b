"""The linker: a new object plus bindings to the running program -> relocated bytes.

Pure: it never touches a process.  ``plan_layout`` decides offsets without an
address, ``link`` relocates at the address the patcher obtained.
"""

from relive.link.layout import plan_layout
from relive.link.linker import link
from relive.link.model import Bound, GotKey, Layout, LinkedImage, LinkRequest

__all__ = ["Bound", "GotKey", "Layout", "LinkRequest", "LinkedImage", "link", "plan_layout"]
