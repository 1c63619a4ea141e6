"""What a run reports: records, terminal summary, Allure, JUnit, KCIDB, SQUAD and LAVA."""
