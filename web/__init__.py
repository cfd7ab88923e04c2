"""Taskyard's web console (`taskyard web`): the operator's pages over the CLI's own services.

`web.app.create_app` builds it; each page group is a module with its blueprint.
"""
