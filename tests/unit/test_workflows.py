from __future__ import annotations

from pathlib import Path

import pytest

from pyflue.errors import WorkflowLoadError, WorkflowNotFound
from pyflue.workflows import WorkflowRegistry
from tests.conftest import WriteWorkflow

RUN = "async def run(ctx):\n    return 1\n"


def test_files_and_nested_folders_give_dotted_names(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("build", RUN)
    write_workflow("ci.lint", RUN)
    write_workflow("_helpers", RUN)
    (project / "src" / "workflows").mkdir(parents=True)
    (project / "src" / "workflows" / "deploy.py").write_text(RUN)
    (project / "workflows" / "_private").mkdir()
    (project / "workflows" / "_private" / "x.py").write_text(RUN)
    assert WorkflowRegistry(project).names() == ["build", "ci.lint", "deploy"]


def test_an_unknown_workflow_lists_the_available_ones(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("alpha", RUN)
    with pytest.raises(WorkflowNotFound, match="unknown workflow 'beta'; available: alpha"):
        WorkflowRegistry(project).get("beta")


def test_a_module_that_fails_to_import_names_its_file(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    path = write_workflow("broken", "import nonexistent_module_xyz\n" + RUN)
    with pytest.raises(WorkflowLoadError) as info:
        WorkflowRegistry(project).get("broken")
    assert str(path) in info.value.message and "ModuleNotFoundError" in info.value.message


def test_a_module_without_run_names_its_file(project: Path, write_workflow: WriteWorkflow) -> None:
    path = write_workflow("norun", "x = 1\n")
    with pytest.raises(WorkflowLoadError, match="does not define a run"):
        WorkflowRegistry(project).get("norun")
    assert path.exists()


def test_two_definitions_of_one_name_are_an_error(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("twice", RUN)
    (project / "src" / "workflows").mkdir(parents=True)
    (project / "src" / "workflows" / "twice.py").write_text(RUN)
    with pytest.raises(WorkflowLoadError, match="defined twice"):
        WorkflowRegistry(project).names()


def test_sync_and_async_run_are_both_accepted(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("a", RUN)
    write_workflow("s", '"""Sync one."""\ndef run(ctx):\n    return 2\n')
    registry = WorkflowRegistry(project)
    assert registry.get("a").is_async and not registry.get("s").is_async
    assert registry.get("s").description == "Sync one."


def test_summaries_describe_each_workflow_and_say_why_a_broken_one_cannot_load(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    write_workflow("good", '"""Builds the thing.\n\nMore words."""\n' + RUN)
    write_workflow("broken", "import nowhere_to_be_found\n" + RUN)
    good, broken = sorted(WorkflowRegistry(project).summaries(), key=lambda w: w.name != "good")
    assert (good.name, good.description, good.error) == ("good", "Builds the thing.", None)
    assert broken.name == "broken" and broken.description == ""
    assert broken.error is not None and "nowhere_to_be_found" in broken.error


def test_an_edited_workflow_file_is_imported_again_on_the_next_get(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    registry = WorkflowRegistry(project)
    write_workflow("edit", "def run(ctx):\n    return 1\n")
    first = registry.get("edit")
    assert registry.get("edit") is first  # unchanged: no new import
    write_workflow("edit", "def run(ctx):\n    return 2\n")  # same size, new code
    assert registry.get("edit").run(None) == 2


def test_a_workflow_file_broken_after_loading_fails_instead_of_running_the_old_code(
    project: Path, write_workflow: WriteWorkflow
) -> None:
    registry = WorkflowRegistry(project)
    write_workflow("edit", "def run(ctx):\n    return 1\n")
    registry.get("edit")
    write_workflow("edit", "def run(ctx):\n    return (\n")
    with pytest.raises(WorkflowLoadError, match=r"failed to import.*SyntaxError"):
        registry.get("edit")
    with pytest.raises(WorkflowLoadError):
        registry.get("edit")
    write_workflow("edit", "def run(ctx):\n    return 3\n")
    assert registry.get("edit").run(None) == 3
    (project / "workflows" / "edit.py").unlink()
    with pytest.raises(WorkflowNotFound):
        registry.get("edit")
