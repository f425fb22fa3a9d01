"""MONAI Label app serving atlas-based labelling by registration (see ``main.py``).

This package is the app folder passed to ``monailabel start_server --app``; its path is
:func:`monai_diffreg.apps.monailabel_app_dir` (``monai-diffreg monailabel-app`` prints it).
Importing it does not import MONAI Label; ``main.py`` and ``lib/infers.py`` do.
"""
