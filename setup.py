from pathlib import Path

from setuptools import find_packages, setup


def requirements(name: str) -> list:
    """Requirement lines of requirements/<name>.txt, following ``-r`` includes."""
    lines = []
    for line in (Path(__file__).parent / 'requirements' / name).read_text().splitlines():
        line = line.split('#')[0].strip()
        if line.startswith('-r '):
            lines += requirements(line[3:].strip())
        elif line:
            lines.append(line)
    return lines


setup(
    name='alter',
    version='0.1.0',
    description='ALTER: All-in-One Layer Pruning and Temporal Expert Routing for diffusion models',
    long_description=Path('README.md').read_text() if Path('README.md').exists() else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['alter', 'alter.*']),
    python_requires='>=3.10',
    install_requires=requirements('runtime.txt'),
    extras_require={'eval': requirements('eval.txt'), 'tests': requirements('tests.txt')},
)
