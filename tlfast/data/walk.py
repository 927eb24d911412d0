"""Walking a class folder without trusting it: links, special files, loops.

A folder from someone else may hold a FIFO named `x.jpg` (reading it hangs),
a link to `/dev/zero` (reading it never ends) or to `~/.ssh/id_rsa` (its
bytes would end up in prepared records and caches), or a folder link that
loops back on itself. Every entry is judged here by what it is, and each one
left out is reported with why, never dropped silently:

- regular files are listed, links to regular files too when they resolve
  inside the data folder (or anywhere with `follow_links=True`);
- FIFOs, devices and sockets are skipped, whatever their name;
- folder links are followed when they resolve inside the data folder (or
  anywhere with `follow_links=True`), each real folder at most once, so a
  loop ends.

Only entries that are links cost an extra `realpath`/`stat`: a plain folder
of photos is listed with one `scandir` per folder, as before.
"""

import os
import stat

from tlfast.data import headers


def outside_reason(path, target):
    """The skip reason of `path`, a link or folder resolving to `target` outside."""
    return (f"symbolic link to '{target}', outside the data folder: not read "
            "(a link can reach any file this process may read); copy it into "
            "the folder, or pass --follow_links to trust the folder's links")


def inside(real, root_real):
    """Whether the real path `real` is `root_real` or under it."""
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def walk_files(top, root_real, *, follow_links=False, hidden=None):
    """Yields (path, skip reason or None) for the files under `top`.

    Depth first, files of a folder (sorted by name) before its sub-folders
    (sorted), as `os.walk` lists them.

    Args:
      top: The folder to walk (a class folder).
      root_real: `os.path.realpath` of the data folder.
      follow_links: Use links that resolve outside `root_real` too.
      hidden: Callable(name) -> True for names to leave out silently
        (dot files).

    Yields:
      (path, None) for a regular file to consider; (path, reason) for an
      entry left out (a special file, a link out of the folder, a broken
      link, a folder met twice or unreadable).
    """
    hidden = hidden or (lambda name: False)
    stack, seen = [(top, os.path.realpath(top))], set()
    while stack:
        folder, real = stack.pop()
        if not follow_links and not inside(real, root_real):
            yield folder, outside_reason(folder, real)
            continue
        if real in seen:
            yield folder, ("folder link to a folder already listed (a link "
                           "loop?): listed once")
            continue
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not hidden(e.name)),
                                 key=lambda e: e.name)
        except OSError as e:
            yield folder, f"cannot list folder: {e.strerror or e}"
            continue
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append((entry.path, os.path.join(real, entry.name)))
            elif entry.is_file(follow_symlinks=False):
                yield entry.path, None
            elif entry.is_symlink():
                yield from _link(entry.path, root_real, follow_links, subfolders)
            else:
                mode = entry.stat(follow_symlinks=False).st_mode
                yield entry.path, headers.not_regular_reason(mode)
        stack.extend(reversed(subfolders))


def _link(path, root_real, follow_links, subfolders):
    """Judges one link; folder links go onto `subfolders`."""
    target = os.path.realpath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        yield path, f"broken symbolic link to '{target}': {e.strerror or e}"
        return
    if not follow_links and not inside(target, root_real):
        yield path, outside_reason(path, target)
    elif stat.S_ISDIR(mode):
        subfolders.append((path, target))
    elif stat.S_ISREG(mode):
        yield path, None
    else:
        yield path, headers.not_regular_reason(mode)
