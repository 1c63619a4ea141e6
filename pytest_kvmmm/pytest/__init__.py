"""The pytest adapter: hooks, the session object, xdist's hooks, fixtures, parametrization,
options, markers and stash keys, and the glue of what labs read (dashboards).

Thin by design: it translates between pytest and the rooms below it (engine/, suite/,
reports/, coordination/, host/), which import no pytest.
"""
