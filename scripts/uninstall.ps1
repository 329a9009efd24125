<#
.SYNOPSIS
    Stops and removes nmr_client and nmr_provider.

.DESCRIPTION
    1. Stops both services (client first, then provider; either order works) and
       waits until `sc.exe query` shows them STOPPED.
    2. Mode A (default, for scripts\install.ps1 without -LinuxImage): finds the
       driver-store packages whose original INF name is nmr_client.inf or
       nmr_provider.inf in `pnputil /enum-drivers`, and removes each with
           pnputil /delete-driver oemNN.inf /uninstall /force
       which also removes the service the INF created.
       Mode B (-LinuxImage, for install.ps1 -LinuxImage): deletes the services
       with `sc.exe delete <name>` and the copied %SystemRoot%\System32\drivers\<name>.sys.
    3. With -RemoveTestCertificate, removes the test certificates that
       install.ps1 -TrustTestCertificate imported into LocalMachine\Root and
       LocalMachine\TrustedPublisher: WDRLocalTestCert (cargo make packages) and
       "nmr Rust driver TEST SIGNING ONLY (throwaway)" (nmr_test.cer, Linux packages).

    Anything already gone is reported and skipped, so the script can be rerun.
    Needs an elevated PowerShell. -WhatIf lists the changes without making them.

.PARAMETER LinuxImage
    Remove the sc.exe-created services and the copied .sys files (mode B).

.PARAMETER RemoveTestCertificate
    Also remove WDRLocalTestCert and the Linux build's throwaway test certificate
    from LocalMachine\Root and LocalMachine\TrustedPublisher.

.PARAMETER TimeoutSeconds
    How long to wait for each service to stop (default 30).

.EXAMPLE
    .\scripts\uninstall.ps1

.EXAMPLE
    .\scripts\uninstall.ps1 -LinuxImage -WhatIf
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [switch] $LinuxImage,
    [switch] $RemoveTestCertificate,
    [ValidateRange(1, 3600)]
    [int] $TimeoutSeconds = 30
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

$Drivers = @('nmr_client', 'nmr_provider')

# Numeric STATE from `sc.exe query` (1 STOPPED, 3 STOP_PENDING, 4 RUNNING, ...),
# or $null when the service does not exist.
function Get-ServiceState {
    param([Parameter(Mandatory = $true)] [string] $Name)
    $result = Invoke-NativeCapture -FilePath 'sc.exe' -ArgumentList @('query', $Name)
    if ($result.ExitCode -eq 1060) { return $null }   # ERROR_SERVICE_DOES_NOT_EXIST
    if ($result.ExitCode -ne 0) { throw "sc.exe query $Name failed with exit code $($result.ExitCode):`n$($result.Output)" }
    if ($result.Output -match '(?m)^\s*STATE\s*:\s*(\d+)') { return [int]$Matches[1] }
    throw "Unexpected output of sc.exe query ${Name}:`n$($result.Output)"
}

function Stop-Driver {
    param([Parameter(Mandatory = $true)] [string] $Name)
    $state = Get-ServiceState -Name $Name
    if ($null -eq $state) { Write-Host "${Name}: no such service."; return }
    if ($state -eq 1) { Write-Host "${Name}: already stopped."; return }
    if (-not $script:ScriptCmdlet.ShouldProcess($Name, 'sc.exe stop')) { return }
    # 1062 = ERROR_SERVICE_NOT_ACTIVE: it stopped in the meantime.
    [void](Invoke-Native -FilePath 'sc.exe' -ArgumentList @('stop', $Name) -AllowedExitCodes @(0, 1062))
    $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutSeconds)
    while ((Get-ServiceState -Name $Name) -ne 1) {
        if ([DateTime]::UtcNow -ge $deadline) {
            throw "$Name did not reach STOPPED within $TimeoutSeconds s (DriverUnload blocked?). Not removing anything."
        }
        Start-Sleep -Milliseconds 100
    }
    Write-Host "${Name}: stopped."
}

# Published names (oemNN.inf) of the driver-store packages installed from
# <Name>.inf. pnputil /enum-drivers prints one block of "Label: value" lines per
# package, blocks separated by blank lines. The labels are translated on
# non-English Windows, so a block is matched by its values only: one value is
# the published name (oem<digits>.inf), another the original name (<Name>.inf).
function Find-PublishedInf {
    param([Parameter(Mandatory = $true)] [string] $Name)
    $result = Invoke-NativeCapture -FilePath 'pnputil.exe' -ArgumentList @('/enum-drivers')
    if ($result.ExitCode -ne 0) {
        throw "pnputil /enum-drivers failed with exit code $($result.ExitCode):`n$($result.Output)"
    }
    $found = @()
    foreach ($block in ($result.Output -split '(?:\r?\n){2,}')) {
        $values = @()
        foreach ($line in ($block -split '\r?\n')) {
            $colon = $line.IndexOf(':')
            if ($colon -ge 0) { $values += $line.Substring($colon + 1).Trim() }
        }
        $published = @($values | Where-Object { $_ -match '^oem\d+\.inf$' })
        $isOurs = @($values | Where-Object { $_ -ieq "$Name.inf" }).Count -gt 0
        if ($isOurs -and $published.Count -eq 1) { $found += $published[0] }
    }
    return , $found
}

function Remove-Packages {
    foreach ($name in $Drivers) {
        $published = Find-PublishedInf -Name $name
        if ($published.Count -eq 0) {
            Write-Host "${name}: no driver-store package with original name $name.inf."
        }
        foreach ($oem in $published) {
            if ($script:ScriptCmdlet.ShouldProcess("$oem ($name.inf)", 'pnputil /delete-driver /uninstall /force')) {
                # 3010 = ERROR_SUCCESS_REBOOT_REQUIRED: removed, a reboot finishes it.
                $code = Invoke-Native -FilePath 'pnputil.exe' -ArgumentList @('/delete-driver', $oem, '/uninstall', '/force') -AllowedExitCodes @(0, 3010)
                if ($code -eq 3010) { Write-Warning "pnputil asks for a reboot to finish removing $oem." }
            }
        }
        if (-not $WhatIfPreference -and $null -ne (Get-ServiceState -Name $name)) {
            Write-Warning "Service $name still exists. If install.ps1 -LinuxImage created it, run: .\scripts\uninstall.ps1 -LinuxImage"
        }
    }
}

function Remove-LinuxImage {
    $driversDir = Join-Path $env:SystemRoot 'System32\drivers'
    foreach ($name in $Drivers) {
        if ($null -eq (Get-ServiceState -Name $name)) {
            Write-Host "${name}: no such service."
        } elseif ($script:ScriptCmdlet.ShouldProcess($name, 'sc.exe delete')) {
            # 1072 = ERROR_SERVICE_MARKED_FOR_DELETE: deleted once every handle to it is closed.
            $code = Invoke-Native -FilePath 'sc.exe' -ArgumentList @('delete', $name) -AllowedExitCodes @(0, 1072)
            if ($code -eq 1072) { Write-Warning "$name is marked for deletion; it goes when the last handle to it closes (close services.msc)." }
        }
        $image = Join-Path $driversDir "$name.sys"
        if (-not (Test-Path -LiteralPath $image -PathType Leaf)) {
            Write-Host "${image}: not present."
        } elseif ($script:ScriptCmdlet.ShouldProcess($image, 'Remove-Item')) {
            Remove-Item -LiteralPath $image -Force -Confirm:$false
            Write-Host "Removed $image"
        }
    }
}

function Remove-TestCertificate {
    foreach ($store in @('Cert:\LocalMachine\Root', 'Cert:\LocalMachine\TrustedPublisher')) {
        # WDRLocalTestCert: wdk-build's; the other: cargo xtask sign's nmr_test.cer.
        $certificates = @(Get-ChildItem -LiteralPath $store | Where-Object {
                $_.Subject -eq 'CN=WDRLocalTestCert' -or $_.Subject -like 'CN=nmr Rust driver TEST SIGNING ONLY (throwaway)*'
            })
        if ($certificates.Count -eq 0) { Write-Host "${store}: no test certificate of ours."; continue }
        foreach ($certificate in $certificates) {
            $target = "$store\$($certificate.Thumbprint) ($($certificate.Subject))"
            if ($script:ScriptCmdlet.ShouldProcess($target, 'Remove-Item')) {
                Remove-Item -LiteralPath "$store\$($certificate.Thumbprint)" -Confirm:$false
                Write-Host "Removed $target"
            }
        }
    }
}

Assert-Administrator -Purpose 'Removing drivers and services'
foreach ($name in $Drivers) { Stop-Driver -Name $name }
if ($LinuxImage) { Remove-LinuxImage } else { Remove-Packages }
if ($RemoveTestCertificate) { Remove-TestCertificate }
Write-Host 'Done.'
