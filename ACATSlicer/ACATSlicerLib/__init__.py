"""MRML-side helpers of the ACAT Slicer module, shared with the web viewer.

Only MRML, VTK and numpy (what `slicer-core` gives without the Slicer GUI): no ``qt``, ``ctk`` or
``slicer.app`` here (`panel` drives the widgets it is given through their Qt properties and signals), so every helper runs and is tested headless (Testing/test_slicer_*.py). One idea
per file:

* `volume_nodes`  - vtkMRMLScalarVolumeNode <-> `ACATLogic.CTVolume` (RAS <-> LPS geometry)
* `compatibility` - the Slicer versions supported (5.10 and newer) and the message shown on older ones
* `parameters`    - the panel's state: typed fields over the module's vtkMRMLScriptedModuleNode
* `panel`         - the .ui's widgets bound to those fields by their SlicerParameterName (no Qt import)
* `nrrd_exchange` - the raw NRRD input written for the background ``acat explain`` process
* `request`       - what one Explain runs: a model + ACATLogic's `ExplainOptions` (+ the DICOM results), as the
                    child's command line
* `dicom_source`  - a volume node's source series in Slicer's DICOM database, for the DICOM results
* `runner`        - the background process: progress lines, ETA, cancel (kills the process tree)
* `controller`    - one Explain at a time: input file -> runner -> result nodes, scene untouched until success;
                    models, CPU retry, display, localisation, export (the module's logic, the web viewer's run)
* `models`        - the models offered: ACATLogic's catalogue, then the folders the user added
* `loading`       - result maps read off the GUI thread into display copies (uint8 / the CT's type)
* `results`       - result nodes from the child's results folder: the first two at once, the rest on demand
* `hierarchy`     - the subject-hierarchy folder of one input + model + method (replaced on rerun)
* `display`       - the saliency overlay: heat colours, opacity, percentile threshold
* `layout`        - original vs counterfactual side by side, slices linked; where a result is shown
* `tables`        - prediction and per-class probabilities as a table node
* `plots`         - class probability vs optimisation step: a plot chart, one series per class
* `localisation`  - hit / IoU / Dice of the saliency against a lesion segmentation or labelmap
* `export`        - the child's results folder copied as it is, plus what the user added
* `dependencies`  - which Python packages are missing, and the install steps (PyTorchUtils for torch)
* `cpu_fallback`  - out of GPU memory recognised from the error line; offer one retry on the CPU
* `sample_data`   - the self-test case as Slicer Sample Data (generated NRRD files, file:// URIs)
* `selftest`      - the checks of the module's self-test, also run headless
* `paths`         - where ACATLogic and ACATCli live (repository checkout or installed extension)
* `selftest_case` - a generated CT and a tiny random model for the module's self-test

Packaged for pip as the top-level package ``ACATSlicerLib`` (pyproject.toml maps it to this folder), so the
web viewer imports it like any package; inside Slicer the module's folder is on ``sys.path``.

Modules that need ACATLogic import it inside functions: ACATLogic needs packages (torch, pydicom's
JPEG plugins) that a fresh Slicer lacks until the user accepts the install, and the module must load
before that to offer it.
"""
