rule structure:
    """A KNN supercell for one data set (extended XYZ carries class and variant; CIF beside it)."""
    output:
        xyz=f"{RESULTS}/structures/{{dataset}}.xyz",
        cif=f"{RESULTS}/structures/{{dataset}}.cif",
    log:
        f"{RESULTS}/logs/structure/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/simulation.yaml"
    params:
        job=job_settings,
    shell:
        "polarmap structure --settings {params.job:q} --out {output.xyz:q} > {log:q} 2>&1"


rule qstem_inputs:
    """QSTEM .cfg atom file and .qsc parameters matching the abTEM simulation."""
    input:
        structure=rules.structure.output.xyz,
    output:
        qsc=f"{RESULTS}/qstem/{{dataset}}/{{dataset}}.qsc",
        cfg=f"{RESULTS}/qstem/{{dataset}}/{{dataset}}.cfg",
    log:
        f"{RESULTS}/logs/qstem_inputs/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/simulation.yaml"
    params:
        job=job_settings,
        out_dir=lambda wildcards, output: Path(output.qsc).parent,
    shell:
        "polarmap qstem --settings {params.job:q} --structure {input.structure:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
