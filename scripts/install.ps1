<#
.SYNOPSIS
    Installs nmr_client.sys and nmr_provider.sys on this test machine.

.DESCRIPTION
    Two ways to build, one way to install (docs/windows.md):

    Mode A (default): a driver package, added to the driver store and installed
    as a primitive driver, whichever machine built it:
        pnputil /add-driver <package>\nmr_client.inf /install
    The INF creates the demand-start kernel service of the same name, whose image
    runs from the driver store (DIRID 13). -PackageRoot holds either layout:
      - built on Windows by `cargo make`: nmr_client_package\ and
        nmr_provider_package\ (.sys .inf .cat .pdb WDRLocalTestCert.cer each);
      - built by cargo xtask package (Linux or Windows): target/sys/ copied as is
        (nmr_client.{sys,inf,cat,pdb}, nmr_provider.{sys,inf,cat,pdb} and one
        nmr_test.cer).
    pnputil checks each package against its signed catalog (.cat) before it
    copies anything.

    Mode B, fallback (-LinuxImage <dir>): bare .sys images without a usable
    catalog. No driver store, no INF: the .sys files are copied to
    %SystemRoot%\System32\drivers and the services are created with
        sc.exe create nmr_client type= kernel start= demand binPath= <path>
    (sc.exe needs the space after each "option="). Use it only when pnputil
    cannot be used; scripts\uninstall.ps1 -LinuxImage undoes it.

    The drivers load only if their signature is trusted: with test-signed builds,
    test signing must be on (bcdedit /set testsigning on, reboot, Secure Boot off).
    The script checks and warns. A test-signed package also needs its test
    certificate in LocalMachine\Root and LocalMachine\TrustedPublisher before
    pnputil accepts it: -TrustTestCertificate imports it there
    (WDRLocalTestCert.cer of a cargo make package, nmr_test.cer of a Linux one).

    The services are created, not started, unless -Start is given. Neither depends
    on the other: they find each other through the NMR in either order.

    Needs an elevated PowerShell (Windows PowerShell 5.1 or PowerShell 7).
    -WhatIf shows every change without making it.

.PARAMETER PackageRoot
    Mode A: the directory that holds nmr_client_package\ and nmr_provider_package\
    (cargo make), or nmr_client.inf, nmr_provider.inf and their files (the
    target/sys/ of a Linux build). Default: <repo>\target\<CargoProfile>.

.PARAMETER CargoProfile
    Mode A, when -PackageRoot is not given: debug (what `cargo make` builds) or
    release (what `cargo make default --release` builds).

.PARAMETER TrustTestCertificate
    Mode A: import the package's test certificate into LocalMachine\Root and
    LocalMachine\TrustedPublisher: WDRLocalTestCert.cer (which wdk-build
    generates and signs with) or nmr_test.cer (which cargo xtask sign makes
    and signs with). Only on a disposable test machine.

.PARAMETER LinuxImage
    Mode B (fallback): the directory that holds nmr_client.sys and nmr_provider.sys.

.PARAMETER Start
    Also start both services (provider first, then client) and show their state.

.EXAMPLE
    .\scripts\install.ps1 -TrustTestCertificate -Start
    Installs the debug packages built by `cargo make`, trusting their test certificate.

.EXAMPLE
    .\scripts\install.ps1 -PackageRoot C:\drop\sys -TrustTestCertificate -Start
    Installs the packages built on Linux (target/sys/ copied to C:\drop\sys), the same way.

.EXAMPLE
    .\scripts\install.ps1 -CargoProfile release -WhatIf

.EXAMPLE
    .\scripts\install.ps1 -LinuxImage C:\drop\sys -Start
#>
[CmdletBinding(SupportsShouldProcess = $true, DefaultParameterSetName = 'Package')]
param(
    [Parameter(ParameterSetName = 'Package')]
    [string] $PackageRoot,

    [Parameter(ParameterSetName = 'Package')]
    [ValidateSet('debug', 'release')]
    [string] $CargoProfile = 'debug',

    [Parameter(ParameterSetName = 'Package')]
    [switch] $TrustTestCertificate,

    [Parameter(ParameterSetName = 'LinuxImage', Mandatory = $true)]
    [string] $LinuxImage,

    [switch] $Start
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# Assert-Administrator, Invoke-Native, Invoke-NativeCapture.
. (Join-Path $PSScriptRoot 'NmrCommon.ps1')

# The script's own ShouldProcess (it carries -WhatIf and -Confirm). The helper
# functions below call it through this variable: a function with [Parameter()]
# attributes is an advanced function whose own $PSCmdlet does not declare
# SupportsShouldProcess.
$ScriptCmdlet = $PSCmdlet

# The fixed names: Cargo lib name = .sys name = INF name = service name.
$Drivers = @('nmr_provider', 'nmr_client')
$DisplayNames = @{
    'nmr_client'   = 'Rust NMR NPI client'
    'nmr_provider' = 'Rust NMR NPI provider'
}

# bcdedit lists "testsigning  Yes" in the {current} entry when test signing is on
# and no testsigning line when it was never set. '{current}' is quoted: bare
# braces are a script block in PowerShell.
function Test-TestSigning {
    $result = Invoke-NativeCapture -FilePath 'bcdedit.exe' -ArgumentList @('/enum', '{current}')
    if ($result.ExitCode -ne 0) {
        Write-Warning "Could not read the boot configuration (bcdedit exit code $($result.ExitCode)): $($result.Output)"
    } elseif ($result.Output -match '(?im)^\s*testsigning\s+Yes\s*$') {
        Write-Host 'Test signing is on.'
    } else {
        Write-Warning ('bcdedit /enum {current} does not show "testsigning Yes": a test-signed driver will not load ' +
            '(sc.exe start fails with 577, ERROR_INVALID_IMAGE_HASH). Turn it on with: bcdedit /set testsigning on, ' +
            'then reboot (with Secure Boot off in the firmware or VM settings).')
    }
    try {
        if (Confirm-SecureBootUEFI) {
            Write-Warning 'Secure Boot is on: Windows ignores testsigning while it is on.'
        }
    } catch {
        Write-Verbose "Secure Boot state not available here: $($_.Exception.Message)"
    }
}

# "4 RUNNING", "1 STOPPED", ... from `sc.exe query <name>`, or $null when no such service exists.
function Get-ServiceStateLine {
    param([Parameter(Mandatory = $true)] [string] $Name)
    $result = Invoke-NativeCapture -FilePath 'sc.exe' -ArgumentList @('query', $Name)
    if ($result.ExitCode -eq 1060) { return $null }   # ERROR_SERVICE_DOES_NOT_EXIST
    if ($result.ExitCode -ne 0) { throw "sc.exe query $Name failed with exit code $($result.ExitCode):`n$($result.Output)" }
    if ($result.Output -match '(?m)^\s*STATE\s*:\s*(\d+\s+\S+)') { return $Matches[1] }
    throw "Unexpected output of sc.exe query ${Name}:`n$($result.Output)"
}

# Where each driver's INF and test certificate are: the layout cargo make writes
# (one <name>_package directory per driver), or the one cargo xtask package
# writes (one flat directory for both drivers).
function Resolve-Packages {
    param([Parameter(Mandatory = $true)] [string] $Root)
    $wdk = Join-Path (Join-Path $Root "$($Drivers[0])_package") "$($Drivers[0]).inf"
    $linux = Join-Path $Root "$($Drivers[0]).inf"
    if (Test-Path -LiteralPath $wdk -PathType Leaf) {
        Write-Host "Packages built by cargo make (WDK) in $Root"
        return @($Drivers | ForEach-Object {
                $package = Join-Path $Root "${_}_package"
                [pscustomobject]@{ Name = $_; Inf = (Join-Path $package "$_.inf"); Cer = (Join-Path $package 'WDRLocalTestCert.cer') }
            })
    }
    if (Test-Path -LiteralPath $linux -PathType Leaf) {
        Write-Host "Packages built by cargo xtask package in $Root"
        # cargo xtask sign exports nmr_test.cer when it signs; without it the images
        # and catalogs are unsigned and pnputil would refuse them.
        if (-not (Test-Path -LiteralPath (Join-Path $Root 'nmr_test.cer') -PathType Leaf)) {
            throw "No nmr_test.cer in ${Root}: this Linux build was not test-signed. Build it with cargo xtask package."
        }
        return @($Drivers | ForEach-Object {
                [pscustomobject]@{ Name = $_; Inf = (Join-Path $Root "$_.inf"); Cer = (Join-Path $Root 'nmr_test.cer') }
            })
    }
    throw ("No $wdk (cargo make; cargo make default --release for -CargoProfile release) and no $linux " +
        '(target/sys/ of cargo xtask package). Build the packages first or pass -PackageRoot.')
}

function Install-FromPackages {
    $root = $PackageRoot
    if (-not $root) {
        $root = Join-Path (Join-Path (Split-Path -Parent $PSScriptRoot) 'target') $CargoProfile
    }
    $trusted = @{}
    foreach ($package in (Resolve-Packages -Root $root)) {
        $name = $package.Name
        $inf = $package.Inf
        if (-not (Test-Path -LiteralPath $inf -PathType Leaf)) { throw "No $inf in the package." }
        $catalog = [IO.Path]::ChangeExtension($inf, '.cat')
        if (-not (Test-Path -LiteralPath $catalog -PathType Leaf)) {
            throw "No $catalog next to $inf. pnputil needs the package's signed catalog; for bare images use -LinuxImage (sc.exe create)."
        }
        if ($TrustTestCertificate -and -not $trusted.ContainsKey($package.Cer)) {
            $cer = $package.Cer
            if (-not (Test-Path -LiteralPath $cer -PathType Leaf)) { throw "No $cer in the package." }
            foreach ($store in @('Cert:\LocalMachine\Root', 'Cert:\LocalMachine\TrustedPublisher')) {
                if ($script:ScriptCmdlet.ShouldProcess($store, "Import-Certificate $cer")) {
                    [void](Import-Certificate -FilePath $cer -CertStoreLocation $store -Confirm:$false)
                    Write-Host "Imported $cer into $store"
                }
            }
            $trusted[$cer] = $true
        }
        $existing = Get-ServiceStateLine -Name $name
        if ($null -ne $existing) {
            Write-Warning "Service $name already exists (STATE $existing). pnputil adds the new package next to the old one; scripts\uninstall.ps1 first gives a clean install."
        }
        if ($script:ScriptCmdlet.ShouldProcess($inf, 'pnputil /add-driver /install')) {
            # 3010 = ERROR_SUCCESS_REBOOT_REQUIRED: installed, a reboot finishes it.
            $code = Invoke-Native -FilePath 'pnputil.exe' -ArgumentList @('/add-driver', $inf, '/install') -AllowedExitCodes @(0, 3010)
            if ($code -eq 3010) { Write-Warning "pnputil asks for a reboot to finish installing $name." }
        }
    }
}

function Install-FromLinuxImage {
    $driversDir = Join-Path $env:SystemRoot 'System32\drivers'
    foreach ($name in $Drivers) {
        $source = Join-Path $LinuxImage "$name.sys"
        if (-not (Test-Path -LiteralPath $source -PathType Leaf)) {
            throw "No $source. Copy target/sys/ of the Linux build (cargo xtask package) here and pass it as -LinuxImage (or, with its catalogs, as -PackageRoot)."
        }
        $existing = Get-ServiceStateLine -Name $name
        if ($null -ne $existing) {
            throw "Service $name already exists (STATE $existing). Remove it first: scripts\uninstall.ps1"
        }
        $destination = Join-Path $driversDir "$name.sys"
        if ($script:ScriptCmdlet.ShouldProcess($destination, "Copy-Item $source")) {
            Copy-Item -LiteralPath $source -Destination $destination -Force -Confirm:$false
            Write-Host "Copied $source to $destination"
        }
        # Each sc.exe option is "name=" followed by the value as the next argument.
        $scArgs = @('create', $name, 'type=', 'kernel', 'start=', 'demand', 'error=', 'normal',
            'binPath=', $destination, 'DisplayName=', $DisplayNames[$name])
        if ($script:ScriptCmdlet.ShouldProcess($name, "sc.exe $($scArgs -join ' ')")) {
            [void](Invoke-Native -FilePath 'sc.exe' -ArgumentList $scArgs)
        }
    }
}

function Start-Drivers {
    foreach ($name in $Drivers) {
        if ($script:ScriptCmdlet.ShouldProcess($name, 'sc.exe start')) {
            # 1056 = ERROR_SERVICE_ALREADY_RUNNING.
            $code = Invoke-Native -FilePath 'sc.exe' -ArgumentList @('start', $name) -AllowedExitCodes @(0, 1056)
            if ($code -eq 1056) { Write-Host "$name was already running." }
            Write-Host "${name}: STATE $(Get-ServiceStateLine -Name $name)"
        }
    }
}

# Both images import ExAllocatePool2, exported from Windows 10 2004 (build
# 19041) on. The INFs refuse older builds by themselves (their install sections
# are decorated NTamd64.10.0...19041); sc.exe create, used for -LinuxImage, has
# no such check, so say it here rather than let sc.exe start fail with 127
# (ERROR_PROC_NOT_FOUND).
function Assert-WindowsBuild {
    $build = [Environment]::OSVersion.Version.Build
    if ($build -lt 19041) {
        throw "These drivers need Windows 10 version 2004 (build 19041) or later: they import ExAllocatePool2. This is build $build."
    }
}

Assert-Administrator -Purpose 'Installing drivers and services'
Assert-WindowsBuild
Test-TestSigning

if ($PSCmdlet.ParameterSetName -eq 'LinuxImage') {
    Install-FromLinuxImage
} else {
    Install-FromPackages
}

if ($Start) {
    Start-Drivers
    Write-Host 'nmr_provider and nmr_client are running. Their trace goes to the kernel debugger or DebugView (docs/windbg.md).'
} else {
    Write-Host 'Installed. Start them in either order with sc.exe start nmr_provider / sc.exe start nmr_client, or run scripts\stress.ps1.'
}
