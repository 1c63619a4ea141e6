"""The suite pytest-kvmmm ships: ``pytest --pyargs pytest_kvmmm.suite -m pagetable`` from anywhere."""
